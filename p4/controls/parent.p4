/* Aggregation trees (docs/protocol.md, "Aggregation trees"): a complete use's partial sum goes up to
 * the parent as this switch's contribution (or, before the parent has acknowledged this switch's JOIN,
 * the JOIN again); the parent's JOIN_ACK, PENDING and RESULTs come down here. */
#ifndef NETAGG_PARENT_P4
#define NETAGG_PARENT_P4

#include "../include/headers.p4"
#include "../include/elements.p4"
#include "../include/state.p4"
#include "reply.p4"

#define STORE_RESULT(k) reg_acc_##k.write(meta.cell, hdr.elems[k].v);

/* A JOIN's payload from this switch to its parent: the job's key there, and prev_round 0 (a switch
 * does not resume a round at its parent). */
#define PARENT_JOIN_PAYLOAD(KEY_HI, KEY_LO)                                                          \
    hdr.elems[0].setValid();                                                                         \
    hdr.elems[0].v = KEY_HI;                                                                         \
    hdr.elems[1].setValid();                                                                         \
    hdr.elems[1].v = KEY_LO;                                                                         \
    hdr.elems[2].setValid();                                                                         \
    hdr.elems[2].v = 0;                                                                              \
    hdr.netagg.count = JOIN_WORDS;

/* Turn the packet into this switch's message to its parent: the partial the packet carries (its valid
 * elements, or none with FLAG_EMPTY in FLAGS; FLAGS with FLAG_OFFER: the use's result, offered), or a
 * JOIN. A reduce-scatter use goes up with root ROOT_ALL (docs/protocol.md, "Collectives", in a tree:
 * the owner is a rank of the whole job, which this switch cannot map to a child). A statement macro,
 * as those of reply.p4 are (and for the same reason). */
#define TO_PARENT(FLAGS, EXPMAX, JOB_INDEX, PARENT_WORKER, PARENT_MAC, PARENT_IP, PARENT_UDP_PORT,    \
                  PARENT_PORT, SWITCH_MAC, SWITCH_IP)                                                 \
    {                                                                                                \
        bit<8> tp_joined;                                                                            \
        bit<8> tp_epoch;                                                                             \
        reg_parent_joined.read(tp_joined, (bit<32>)(JOB_INDEX));                                     \
        reg_parent_epoch.read(tp_epoch, (bit<32>)(JOB_INDEX));                                       \
        if (tp_joined == 1) {                                                                        \
            hdr.netagg.type = TYPE_CONTRIB;                                                          \
            hdr.netagg.flags = FLAGS;                                                                \
            hdr.netagg.epoch = tp_epoch;                                                             \
            hdr.netagg.exp = EXPMAX;                                                                 \
            hdr.netagg.bitmap = 0;                                                                   \
            if (hdr.netagg.op[15:12] == COLL_REDUCE_SCATTER) {                                       \
                hdr.netagg.op[7:0] = ROOT_ALL;                                                       \
            }                                                                                        \
            if ((FLAGS & FLAG_RETX) == 0) {                                                          \
                events.count(EV_PARTIALS_SENT);                                                      \
            } else {                                                                                 \
                events.count(EV_PARTIALS_RESENT);                                                    \
            }                                                                                        \
        } else {                                                                                     \
            bit<32> tp_incarnation;                                                                  \
            reg_parent_inc.read(tp_incarnation, (bit<32>)(JOB_INDEX));                               \
            NO_PAYLOAD                                                                               \
            hdr.netagg.type = TYPE_JOIN;                                                             \
            hdr.netagg.flags = 0;                                                                    \
            hdr.netagg.epoch = 0;                                                                    \
            hdr.netagg.slot = 0;                                                                     \
            hdr.netagg.set = 0;                                                                      \
            PARENT_JOIN_PAYLOAD(meta.parent_key_hi, meta.parent_key_lo)                              \
            hdr.netagg.seq = tp_incarnation;                                                         \
            hdr.netagg.exp = 0;                                                                      \
            hdr.netagg.op = 0;                                                                       \
            hdr.netagg.bitmap = 0;                                                                   \
            events.count(EV_PARENT_JOINS_SENT);                                                      \
        }                                                                                            \
        hdr.netagg.worker = PARENT_WORKER;                                                           \
        hdr.udp.length = 8 + NETAGG_HEADER_BYTES + PAYLOAD_BYTES;                                    \
        hdr.udp.checksum = 0;                                                                        \
        hdr.ipv4.total_len = 20 + hdr.udp.length;                                                    \
        hdr.ipv4.ttl = 64;                                                                           \
        hdr.ipv4.src = SWITCH_IP;                                                                    \
        hdr.ipv4.dst = PARENT_IP;                                                                    \
        hdr.udp.src_port = NETAGG_PORT;                                                              \
        hdr.udp.dst_port = PARENT_UDP_PORT;                                                          \
        hdr.ethernet.src = SWITCH_MAC;                                                               \
        hdr.ethernet.dst = PARENT_MAC;                                                               \
        sm.egress_spec = PARENT_PORT;                                                                \
    }

/* A JOIN_ACK, PENDING, REFUSE or RESULT from the parent: the RESULT of a use goes down to every child
 * (with its payload, or EMPTY as it came; a reduce-scatter's too);
 * a refusal that says this switch is not in the parent's round makes it rejoin there (a new
 * incarnation, prev_round 0: a P4 leaf does not resume a round at its parent, README). */
control FromParent(inout headers_t hdr, inout metadata_t meta, inout standard_metadata_t sm) {
    action store_result() {
        FOR_EACH_ELEMENT(STORE_RESULT)
    }

    action store_result_wide() {
        reg_acc_wide.write(meta.cell, hdr.wide.v);
    }

    apply {
        bit<32> job = (bit<32>)meta.job_index;
        reg_parent_epoch.read(meta.parent_epoch, job);
        reg_parent_joined.read(meta.parent_joined, job);
        events.count(EV_FROM_PARENT);
        bool send = false;
        if (hdr.netagg.type == TYPE_JOIN_ACK) {
            bit<32> incarnation;
            reg_parent_inc.read(incarnation, job);
            if (hdr.netagg.seq == incarnation) {
                reg_parent_epoch.write(job, hdr.netagg.epoch);
                reg_parent_joined.write(job, 1);
            }
        } else if (hdr.netagg.type == TYPE_REFUSE) {
            if ((hdr.netagg.exp == REASON_NOT_JOINED || hdr.netagg.exp == REASON_STALE_EPOCH)
                    && meta.parent_joined == 1) {
                events.count(EV_PARENT_REJOINS);
                bit<32> parent_incarnation;
                random(parent_incarnation, 1, 0xFFFFFFFF);
                reg_parent_inc.write(job, parent_incarnation);
                reg_parent_joined.write(job, 0);
                send = true;
                /* not joined there now: the JOIN */
                TO_PARENT(0, 0, meta.job_index, meta.parent_worker, meta.parent_mac, meta.parent_ip,
                          meta.parent_udp_port, meta.parent_port, meta.switch_mac, meta.switch_ip)
            }
        } else if (hdr.netagg.type == TYPE_RESULT) {
            bit<32> cell = ((bit<32>)hdr.netagg.slot << 1) + (bit<32>)hdr.netagg.set;
            meta.cell = cell;
            bit<152> state;
            reg_slot.read(state, cell);
            bool slot_ok = hdr.netagg.slot >= meta.slot_base
                && (bit<16>)(hdr.netagg.slot - meta.slot_base) < meta.slots;
            bool empty = SLOT_TAG(state) != meta.epoch_tag;  /* a set of an earlier epoch */
            bool known = !empty && (SLOT_FLAGS(state) & SLOT_READY_BIT) != 0
                && SLOT_SEQ(state) == hdr.netagg.seq;
            bit<32> diff = hdr.netagg.seq - SLOT_SEQ(state);
            bool fits;
            if ((hdr.netagg.flags & FLAG_FINAL) != 0) {
                /* a result the parent had offered to it: it stands for the use whatever this switch
                 * holds of it, unless the set has moved on to a later use */
                fits = empty || diff < 0x80000000;
            } else {
                /* the use that is complete here and waits for its result */
                fits = !empty && diff == 0 && SLOT_NELEM(state) == hdr.netagg.count
                    && SLOT_BITMAP(state) == meta.full;
            }
            if (meta.parent_joined == 1 && hdr.netagg.epoch == meta.parent_epoch && slot_ok && !known
                    && fits) {
                send = true;
                /* the use keeps its op (the children's packets carry it; the parent's RESULT of a
                 * reduce-scatter says root ROOT_ALL), unless the set held no part of this use */
                bit<16> use_op = SLOT_OP(state);
                bit<8> payload = SLOT_PAYLOAD_BIT;
                if (empty || diff != 0) {
                    use_op = hdr.netagg.op;
                }
                if ((hdr.netagg.flags & FLAG_EMPTY) != 0) {
                    payload = 0;
                } else if (hdr.wide.isValid()) {
                    store_result_wide();
                } else {
                    store_result();
                }
                /* ready, with the tree's exponent maximum and the FINAL flag for repeats */
                reg_slot.write(cell, SLOT_STATE(hdr.netagg.seq, meta.epoch_tag, meta.full, hdr.netagg.count,
                                                hdr.netagg.exp, use_op,
                                                SLOT_READY_BIT | payload | (hdr.netagg.flags & FLAG_FINAL)));
                hdr.netagg.worker = 0xFFFF;
                /* down to every child, with payload or EMPTY as it came */
                REPLY_HEADER(meta.epoch, meta.switch_mac, meta.switch_ip, TYPE_RESULT,
                             hdr.netagg.flags & (FLAG_FINAL | FLAG_EMPTY), hdr.netagg.count, hdr.netagg.exp,
                             meta.full, use_op)
                TO_JOB(meta.job_index)
            } else {
                events.count(EV_PARENT_STALE);
            }
        }
        if (!send) {
            mark_to_drop(sm);  /* a JOIN_ACK or PENDING is only taken in */
        }
    }
}

#endif
