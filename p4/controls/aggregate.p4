/* Contributions (docs/protocol.md, "Switch rules", 2-5): the slot set's use number, bitmap, count and
 * exponent maximum, the per-element accumulators, and the RESULT, PENDING or repeated RESULT. */
#ifndef NETAGG_AGGREGATE_P4
#define NETAGG_AGGREGATE_P4

#include "../include/headers.p4"
#include "../include/elements.p4"
#include "../include/state.p4"
#include "reply.p4"

/* First contribution of a use: copy; later ones: add (int32, wrapping): v = (acc & keep) + element,
 * keep = 0 for the first, all ones after. The packet then carries the running sum, which is the
 * RESULT's payload when this contribution completes the use. Straight-line code on purpose: BMv2 runs
 * a branch-free block as one action, while an `if` per element costs a pipeline step each (several
 * times slower in bench/bmv2.py). Elements past `count` are invalid headers; the cells they touch
 * belong to this slot set and are overwritten by the first contribution of any later use that covers
 * them, and no reply carries them. */
#define ACCUMULATE(k)                                                                          \
    reg_acc.read(v, meta.acc_base + k);                                                        \
    v = (v & keep) + hdr.elems[k].v;                                                           \
    reg_acc.write(meta.acc_base + k, v);                                                       \
    hdr.elems[k].v = v;

/* A repeat of a complete use: its stored result. */
#define STORED_RESULT(k) reg_acc.read(hdr.elems[k].v, meta.acc_base + k);

control Aggregate(inout headers_t hdr, inout metadata_t meta, inout standard_metadata_t sm) {
    ReplyHeader() reply_header;
    ToSender() to_sender;
    ToJob() to_job;
    NoPayload() no_payload;

    action accumulate(bit<32> keep) {
        bit<32> v;
        FOR_EACH_ELEMENT(ACCUMULATE)
    }

    action stored_result() {
        FOR_EACH_ELEMENT(STORED_RESULT)
    }

    apply {
        bit<32> cell = ((bit<32>)hdr.netagg.slot << 1) + (bit<32>)hdr.netagg.set;
        meta.cell = cell;
        meta.acc_base = cell * NETAGG_ELEMENTS;
        if ((hdr.netagg.flags & FLAG_RETX) != 0) {
            events.count(EV_RETRANSMISSIONS);
        }
        bit<32> cur;
        bit<32> tag;
        bit<32> bitmap;
        bit<16> nelem;
        bit<16> expmax;
        reg_seq.read(cur, cell);
        reg_seq_tag.read(tag, cell);
        reg_bitmap.read(bitmap, cell);
        reg_nelem.read(nelem, cell);
        reg_expmax.read(expmax, cell);
        bit<32> diff = hdr.netagg.seq - cur;
        if (tag != meta.epoch_tag || (diff != 0 && diff < 0x80000000)) {
            /* A newer use of this set (or the set is empty in this epoch): every worker has the
             * result of the use it replaces (docs/protocol.md, "Slot reuse"). */
            cur = hdr.netagg.seq;
            tag = meta.epoch_tag;
            bitmap = 0;
            nelem = hdr.netagg.count;
            expmax = 0;
            reg_seq.write(cell, cur);
            reg_seq_tag.write(cell, tag);
            reg_nelem.write(cell, nelem);
        } else if (diff != 0) {
            meta.drop = 1;
            meta.drop_reason = DROP_STALE_SEQ;
        } else if (hdr.netagg.count != nelem) {
            meta.drop = 1;
            meta.drop_reason = DROP_COUNT_MISMATCH;
        }
        if (meta.drop == 0) {
            if ((bitmap & meta.wbit) != 0) {
                events.count(EV_REPEATS);
                to_sender.apply(hdr, sm);
                if (bitmap == meta.full) {
                    events.count(EV_RESULTS_RESENT);
                    stored_result();
                    reply_header.apply(hdr, meta.epoch, meta.switch_mac, meta.switch_ip, TYPE_RESULT, FLAG_UNICAST, nelem, expmax, bitmap);
                } else {
                    events.count(EV_PENDING_SENT);
                    no_payload.apply(hdr);
                    reply_header.apply(hdr, meta.epoch, meta.switch_mac, meta.switch_ip, TYPE_PENDING, 0, 0, 0, bitmap);
                }
            } else {
                if (bitmap == 0) {
                    accumulate(0);
                } else {
                    accumulate(0xFFFFFFFF);
                }
                bitmap = bitmap | meta.wbit;
                if (hdr.netagg.exp > expmax) {
                    expmax = hdr.netagg.exp;
                }
                reg_expmax.write(cell, expmax);
                events.count(EV_CONTRIBUTIONS);
                if (bitmap != meta.full) {
                    mark_to_drop(sm);  /* absorbed: nothing to send yet */
                } else {
                    events.count(EV_COMPLETIONS);
                    hdr.netagg.worker = 0xFFFF;
                    reply_header.apply(hdr, meta.epoch, meta.switch_mac, meta.switch_ip, TYPE_RESULT, 0, nelem, expmax, bitmap);
                    to_job.apply(meta.job_index, sm);
                }
            }
            reg_bitmap.write(cell, bitmap);
        }
    }
}

#endif
