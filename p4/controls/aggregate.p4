/* Contributions (docs/protocol.md, "Switch rules", 2-5): the slot set's use number, bitmap, count and
 * exponent maximum, the per-element accumulators, and the RESULT, PENDING or repeated RESULT. */
#ifndef NETAGG_AGGREGATE_P4
#define NETAGG_AGGREGATE_P4

#include "../include/headers.p4"
#include "../include/elements.p4"
#include "../include/state.p4"
#include "reply.p4"
#include "parent.p4"

/* Per element k: the first contribution of a use is stored as it is; later ones are added (int32,
 * wrapping), and the one that completes the use also carries the sum out as the RESULT's payload.
 * Straight-line actions on purpose: BMv2 runs a branch-free block as one action, while an `if` per
 * element costs a pipeline step each, and every arithmetic operation is a GMP call (bench/bmv2.py
 * measured each of these choices). Elements past `count` are invalid headers: the cells they touch
 * belong to this slot set and are overwritten by the first contribution of any later use that covers
 * them, and no reply carries them. */
#define STORE_FIRST(k) reg_acc_##k.write(meta.cell, hdr.elems[k].v);
#define ADD(k)                                                                                 \
    reg_acc_##k.read(v, meta.cell);                                                            \
    v = v + hdr.elems[k].v;                                                                    \
    reg_acc_##k.write(meta.cell, v);
#define ADD_AND_CARRY(k)                                                                       \
    reg_acc_##k.read(v, meta.cell);                                                            \
    hdr.elems[k].v = hdr.elems[k].v + v;                                                       \
    reg_acc_##k.write(meta.cell, hdr.elems[k].v);

/* A repeat of a complete use: its stored result. */
#define STORED_RESULT(k) reg_acc_##k.read(hdr.elems[k].v, meta.cell);

control Aggregate(inout headers_t hdr, inout metadata_t meta, inout standard_metadata_t sm) {
    action store_first() {
        FOR_EACH_ELEMENT(STORE_FIRST)
    }

    action add() {
        bit<32> v;
        FOR_EACH_ELEMENT(ADD)
    }

    action add_and_carry() {
        bit<32> v;
        FOR_EACH_ELEMENT(ADD_AND_CARRY)
    }

    action stored_result() {
        FOR_EACH_ELEMENT(STORED_RESULT)
    }

    /* A full packet: the first contribution of a use is stored; a later one is added, and the sum
     * also goes into the packet, as the RESULT's payload if this contribution completes the use,
     * dropped with the packet otherwise (one action fewer than telling the two apart). */
    action store_first_wide() {
        reg_acc_wide.write(meta.cell, hdr.wide.v);
    }

    action add_and_carry_wide() {
        bit<NETAGG_PAYLOAD_BITS> acc;
        reg_acc_wide.read(acc, meta.cell);
        hdr.wide.v = SWAR_ADD(acc, hdr.wide.v);
        reg_acc_wide.write(meta.cell, hdr.wide.v);
    }

    action stored_result_wide() {
        reg_acc_wide.read(hdr.wide.v, meta.cell);
    }

    apply {
        if ((hdr.netagg.flags & FLAG_RETX) != 0) {
            events.count(EV_RETRANSMISSIONS);
        }
        bit<32> cell = ((bit<32>)hdr.netagg.slot << 1) + (bit<32>)hdr.netagg.set;
        meta.cell = cell;
        bit<136> state;
        reg_slot.read(state, cell);
        bit<32> cur = SLOT_SEQ(state);
        bit<32> bitmap = SLOT_BITMAP(state);
        bit<16> nelem = SLOT_NELEM(state);
        bit<16> expmax = SLOT_EXPMAX(state);
        bit<8> sflags = SLOT_FLAGS(state);
        bit<32> diff = hdr.netagg.seq - cur;
        if (SLOT_TAG(state) != meta.epoch_tag || (diff != 0 && diff < 0x80000000)) {
            /* A newer use of this set (or the set is empty in this epoch): every worker has the
             * result of the use it replaces (docs/protocol.md, "Slot reuse"). */
            cur = hdr.netagg.seq;
            bitmap = 0;
            nelem = hdr.netagg.count;
            expmax = 0;
            sflags = 0;
        }
        if (hdr.netagg.seq != cur || hdr.netagg.count != nelem) {
            meta.drop = 1;
            if (hdr.netagg.seq != cur) {
                meta.drop_reason = DROP_STALE_SEQ;
            } else {
                meta.drop_reason = DROP_COUNT_MISMATCH;
                meta.refuse_detail = (bit<32>)nelem;  /* the REFUSE says which count the use has */
            }
        } else if ((hdr.netagg.flags & FLAG_OFFER) != 0) {
            /* "Recovery", the switch and an OFFER: unless the use's result is known here (a newer use
             * or an empty set counts as unknown), the offered values become it, whatever had been
             * added, and go to every worker. At a leaf the offer also goes up as this switch's own:
             * the job group's replica for the parent becomes it in the egress. */
            events.count(EV_OFFERS);
            if ((sflags & SLOT_READY_BIT) != 0) {
                mark_to_drop(sm);
            } else {
                events.count(EV_RECOVERIES);
                bit<8> final = hdr.netagg.flags & FLAG_FINAL;
                if (hdr.wide.isValid()) {
                    store_first_wide();
                } else {
                    store_first();
                }
                reg_slot.write(cell, SLOT_STATE(cur, meta.epoch_tag, meta.full, nelem, hdr.netagg.exp,
                                                final | SLOT_READY_BIT));
                hdr.netagg.worker = 0xFFFF;
                REPLY_HEADER(meta.epoch, meta.switch_mac, meta.switch_ip, TYPE_RESULT, final, nelem,
                             hdr.netagg.exp, meta.full)
                TO_JOB(meta.job_index)
                meta.offer_up = meta.has_parent;
            }
        } else if ((bitmap & meta.wbit) != 0) {
            events.count(EV_REPEATS);
            if (bitmap == meta.full) {
                if (hdr.wide.isValid()) {
                    stored_result_wide();
                } else {
                    stored_result();
                }
                if ((sflags & SLOT_READY_BIT) == 0) {
                    /* A tree: the partial went up and the parent's RESULT has not come back (one of
                     * the two was lost): the worker's retransmission makes this switch send it again. */
                    TO_PARENT(FLAG_RETX, expmax, meta.job_index, meta.parent_worker, meta.parent_mac,
                              meta.parent_ip, meta.parent_udp_port, meta.parent_port, meta.switch_mac,
                              meta.switch_ip)
                } else {
                    TO_SENDER
                    events.count(EV_RESULTS_RESENT);
                    REPLY_HEADER(meta.epoch, meta.switch_mac, meta.switch_ip, TYPE_RESULT,
                                 FLAG_UNICAST | (sflags & FLAG_FINAL), nelem, expmax, bitmap)
                }
            } else {
                TO_SENDER
                events.count(EV_PENDING_SENT);
                NO_PAYLOAD
                REPLY_HEADER(meta.epoch, meta.switch_mac, meta.switch_ip, TYPE_PENDING, 0, 0, 0, bitmap)
            }
        } else {
            bit<32> after = bitmap | meta.wbit;
            /* max(exp, expmax) without a branch (p4c makes an `if` of `?:`, and BMv2 a pipeline
             * step of each arm): d's upper half is all ones exactly when exp < expmax. */
            bit<32> d = (bit<32>)hdr.netagg.exp - (bit<32>)expmax;
            expmax = expmax + (d[15:0] & ~d[31:16]);
            state = SLOT_STATE(cur, meta.epoch_tag, after, nelem, expmax, 8w0);
            events.count(EV_CONTRIBUTIONS);
            if (hdr.wide.isValid()) {
                if (bitmap == 0) {
                    store_first_wide();
                } else {
                    add_and_carry_wide();
                }
            } else if (after == meta.full) {
                if (bitmap == 0) {
                    store_first();  /* a job of one worker: its values are the sum */
                } else {
                    add_and_carry();
                }
            } else if (bitmap == 0) {
                store_first();
            } else {
                add();
            }
            if (after != meta.full) {
                reg_slot.write(cell, state);
                mark_to_drop(sm);  /* absorbed: nothing to send yet */
            } else if (meta.has_parent == 1) {
                reg_slot.write(cell, state);  /* ready once the parent's RESULT comes down */
                events.count(EV_COMPLETIONS);
                TO_PARENT(0, expmax, meta.job_index, meta.parent_worker, meta.parent_mac, meta.parent_ip, meta.parent_udp_port,
                                meta.parent_port, meta.switch_mac, meta.switch_ip)
            } else {
                SLOT_FLAGS(state) = SLOT_READY_BIT;
                reg_slot.write(cell, state);
                events.count(EV_COMPLETIONS);
                hdr.netagg.worker = 0xFFFF;
                REPLY_HEADER(meta.epoch, meta.switch_mac, meta.switch_ip, TYPE_RESULT, 0, nelem, expmax, after)
                TO_JOB(meta.job_index)
            }
        }
    }
}

#endif
