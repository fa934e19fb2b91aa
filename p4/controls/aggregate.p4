/* Contributions (docs/protocol.md, "Switch rules", 2-5): the slot set's use number, bitmap, count,
 * exponent maximum and op, the per-element accumulators (combined by the use's reduction), and the
 * RESULT (EMPTY when no contribution carried a payload; for a reduce-scatter, EMPTY to every worker but
 * the owner: the egress cuts those replicas), PENDING or repeated RESULT. */
#ifndef NETAGG_AGGREGATE_P4
#define NETAGG_AGGREGATE_P4

#include "../include/headers.p4"
#include "../include/elements.p4"
#include "../include/state.p4"
#include "reply.p4"
#include "parent.p4"

/* Per element k: the first payload of a use is stored as it is; later ones are combined with it by the
 * use's reduction (sum: int32, wrapping; max, min: of signed int32), and the one that completes the
 * use also carries the result out as the RESULT's payload. Straight-line actions on purpose: BMv2 runs
 * a branch-free block as one action, while an `if` per element in a control costs a pipeline step
 * each, and every arithmetic operation is a GMP call (bench/bmv2.py measured each of these choices);
 * the `if` of MAX/MIN is inside an action, where p4c makes it one conditional assignment. Elements past
 * `count` are invalid headers: the cells they touch belong to this slot set and are overwritten by the
 * first payload of any later use that covers them, and no reply carries them. */
#define STORE_FIRST(k) reg_acc_##k.write(meta.cell, hdr.elems[k].v);
#define ADD(k)                                                                                 \
    reg_acc_##k.read(v, meta.cell);                                                            \
    v = v + hdr.elems[k].v;                                                                    \
    reg_acc_##k.write(meta.cell, v);
#define ADD_AND_CARRY(k)                                                                       \
    reg_acc_##k.read(v, meta.cell);                                                            \
    hdr.elems[k].v = hdr.elems[k].v + v;                                                       \
    reg_acc_##k.write(meta.cell, hdr.elems[k].v);
#define MAX_AND_CARRY(k)                                                                       \
    reg_acc_##k.read(v, meta.cell);                                                            \
    if ((int<32>)v > (int<32>)hdr.elems[k].v) {                                                \
        hdr.elems[k].v = v;                                                                    \
    }                                                                                          \
    reg_acc_##k.write(meta.cell, hdr.elems[k].v);
#define MIN_AND_CARRY(k)                                                                       \
    reg_acc_##k.read(v, meta.cell);                                                            \
    if ((int<32>)v < (int<32>)hdr.elems[k].v) {                                                \
        hdr.elems[k].v = v;                                                                    \
    }                                                                                          \
    reg_acc_##k.write(meta.cell, hdr.elems[k].v);

/* The use's stored values as the packet's payload (a repeat, or an EMPTY contribution that completes
 * the use): every element header, of which the egress keeps `count` (TRIM). */
#define LOAD_RESULT(k)                                                                         \
    hdr.elems[k].setValid();                                                                   \
    reg_acc_##k.read(hdr.elems[k].v, meta.cell);

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

    action max_and_carry() {
        bit<32> v;
        FOR_EACH_ELEMENT(MAX_AND_CARRY)
    }

    action min_and_carry() {
        bit<32> v;
        FOR_EACH_ELEMENT(MIN_AND_CARRY)
    }

    action load_result() {
        FOR_EACH_ELEMENT(LOAD_RESULT)
    }

    /* A full packet: the first payload of a use is stored; a later one is combined, and the result
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

    /* max and min lane by lane: take the packet's lane where acc < packet (max), the accumulator's
     * there (min), with the lane mask of SWAR_LESS. */
    action max_and_carry_wide() {
        bit<NETAGG_PAYLOAD_BITS> acc;
        bit<NETAGG_PAYLOAD_BITS> less;
        reg_acc_wide.read(acc, meta.cell);
        SWAR_LESS(less, acc, hdr.wide.v)
        hdr.wide.v = acc ^ ((acc ^ hdr.wide.v) & less);
        reg_acc_wide.write(meta.cell, hdr.wide.v);
    }

    action min_and_carry_wide() {
        bit<NETAGG_PAYLOAD_BITS> acc;
        bit<NETAGG_PAYLOAD_BITS> less;
        reg_acc_wide.read(acc, meta.cell);
        SWAR_LESS(less, acc, hdr.wide.v)
        hdr.wide.v = hdr.wide.v ^ ((acc ^ hdr.wide.v) & less);
        reg_acc_wide.write(meta.cell, hdr.wide.v);
    }

    action load_result_wide() {
        hdr.wide.setValid();
        reg_acc_wide.read(hdr.wide.v, meta.cell);
    }

    apply {
        if ((hdr.netagg.flags & FLAG_RETX) != 0) {
            events.count(EV_RETRANSMISSIONS);
        }
        bit<32> cell = ((bit<32>)hdr.netagg.slot << 1) + (bit<32>)hdr.netagg.set;
        meta.cell = cell;
        bit<152> state;
        reg_slot.read(state, cell);
        bit<32> cur = SLOT_SEQ(state);
        bit<32> bitmap = SLOT_BITMAP(state);
        bit<16> nelem = SLOT_NELEM(state);
        bit<16> expmax = SLOT_EXPMAX(state);
        bit<16> use_op = SLOT_OP(state);
        bit<8> sflags = SLOT_FLAGS(state);
        bit<32> diff = hdr.netagg.seq - cur;
        if (SLOT_TAG(state) != meta.epoch_tag || (diff != 0 && diff < 0x80000000)) {
            /* A newer use of this set (or the set is empty in this epoch): every worker has the
             * result of the use it replaces (docs/protocol.md, "Slot reuse"). */
            cur = hdr.netagg.seq;
            bitmap = 0;
            nelem = hdr.netagg.count;
            expmax = 0;
            use_op = hdr.netagg.op;
            sflags = 0;
        }
        /* Which accumulator holds the use: the wide one for full packets (the parser's wide path). */
        bool wide = nelem == NETAGG_ELEMENTS;
        if (hdr.netagg.seq != cur || hdr.netagg.count != nelem || hdr.netagg.op != use_op) {
            meta.drop = 1;
            if (hdr.netagg.seq != cur) {
                meta.drop_reason = DROP_STALE_SEQ;
            } else if (hdr.netagg.count != nelem) {
                meta.drop_reason = DROP_COUNT_MISMATCH;
                meta.refuse_detail = (bit<32>)nelem;  /* the REFUSE says which count the use has */
            } else {
                meta.drop_reason = DROP_OP_MISMATCH;
                meta.refuse_detail = (bit<32>)use_op;  /* ... or which op */
            }
        } else if ((hdr.netagg.flags & FLAG_OFFER) != 0) {
            /* "Recovery", the switch and an OFFER: unless the use's result is known here (a newer use
             * or an empty set counts as unknown), the offered values become it, whatever had been
             * added, and go to every worker. At a leaf the offer also goes up as this switch's own:
             * the job group's replica for the parent becomes it in the egress. (An OFFER always
             * carries its values: EMPTY ones are bad_length.) */
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
                reg_slot.write(cell, SLOT_STATE(cur, meta.epoch_tag, meta.full, nelem, hdr.netagg.exp, use_op,
                                                final | SLOT_READY_BIT | SLOT_PAYLOAD_BIT));
                hdr.netagg.worker = 0xFFFF;
                REPLY_HEADER(meta.epoch, meta.switch_mac, meta.switch_ip, TYPE_RESULT, final, nelem,
                             hdr.netagg.exp, meta.full, use_op)
                TO_JOB(meta.job_index)
                meta.offer_up = meta.has_parent;
            }
        } else if ((bitmap & meta.wbit) != 0) {
            events.count(EV_REPEATS);
            if (bitmap == meta.full) {
                /* What the sender got: the use's values, or EMPTY (no payload anywhere; or a
                 * reduce-scatter chunk that is not the sender's, except at a leaf of a tree, where
                 * every child got the parent's RESULT) */
                bit<8> empty = 0;
                if ((sflags & SLOT_PAYLOAD_BIT) == 0 || (use_op[15:12] == COLL_REDUCE_SCATTER
                        && use_op[7:0] != ROOT_ALL && meta.has_parent == 0
                        && hdr.netagg.worker != (bit<16>)use_op[7:0])) {
                    empty = FLAG_EMPTY;
                } else if (wide) {
                    load_result_wide();
                } else {
                    load_result();
                }
                TRIM
                if ((sflags & SLOT_READY_BIT) == 0) {
                    /* A tree: the partial went up and the parent's RESULT has not come back (one of
                     * the two was lost): the worker's retransmission makes this switch send it again. */
                    TO_PARENT(FLAG_RETX | empty, expmax, meta.job_index, meta.parent_worker, meta.parent_mac,
                              meta.parent_ip, meta.parent_udp_port, meta.parent_port, meta.switch_mac,
                              meta.switch_ip)
                } else {
                    TO_SENDER
                    events.count(EV_RESULTS_RESENT);
                    REPLY_HEADER(meta.epoch, meta.switch_mac, meta.switch_ip, TYPE_RESULT,
                                 FLAG_UNICAST | (sflags & FLAG_FINAL) | empty, nelem, expmax, bitmap, use_op)
                }
            } else {
                TO_SENDER
                events.count(EV_PENDING_SENT);
                NO_PAYLOAD
                REPLY_HEADER(meta.epoch, meta.switch_mac, meta.switch_ip, TYPE_PENDING, 0, 0, 0, bitmap, 0)
            }
        } else {
            bit<32> after = bitmap | meta.wbit;
            /* max(exp, expmax) without a branch (p4c makes an `if` of `?:`, and BMv2 a pipeline
             * step of each arm): d's upper half is all ones exactly when exp < expmax. */
            bit<32> d = (bit<32>)hdr.netagg.exp - (bit<32>)expmax;
            expmax = expmax + (d[15:0] & ~d[31:16]);
            events.count(EV_CONTRIBUTIONS);
            if ((hdr.netagg.flags & FLAG_EMPTY) == 0) {
                /* a payload: the use's first is copied, later ones combined by its reduction */
                if ((sflags & SLOT_PAYLOAD_BIT) == 0) {
                    if (wide) {
                        store_first_wide();
                    } else {
                        store_first();
                    }
                } else if (use_op[11:8] == REDUCE_SUM) {
                    if (wide) {
                        add_and_carry_wide();
                    } else if (after == meta.full) {
                        add_and_carry();
                    } else {
                        add();
                    }
                } else if (use_op[11:8] == REDUCE_MAX) {
                    if (wide) {
                        max_and_carry_wide();
                    } else {
                        max_and_carry();
                    }
                } else if (wide) {
                    min_and_carry_wide();
                } else {
                    min_and_carry();
                }
                sflags = SLOT_PAYLOAD_BIT;
            }
            state = SLOT_STATE(cur, meta.epoch_tag, after, nelem, expmax, use_op, sflags);
            if (after != meta.full) {
                reg_slot.write(cell, state);
                mark_to_drop(sm);  /* absorbed: nothing to send yet */
            } else {
                /* complete: the packet carries the result, unless it came EMPTY (then the stored
                 * values, if any contribution had some; otherwise the RESULT is EMPTY too) */
                bit<8> empty = 0;
                if (sflags == 0) {
                    empty = FLAG_EMPTY;
                } else if ((hdr.netagg.flags & FLAG_EMPTY) != 0) {
                    if (wide) {
                        load_result_wide();
                    } else {
                        load_result();
                    }
                    TRIM
                }
                events.count(EV_COMPLETIONS);
                if (meta.has_parent == 1) {
                    reg_slot.write(cell, state);  /* ready once the parent's RESULT comes down */
                    TO_PARENT(empty, expmax, meta.job_index, meta.parent_worker, meta.parent_mac,
                              meta.parent_ip, meta.parent_udp_port, meta.parent_port, meta.switch_mac,
                              meta.switch_ip)
                } else {
                    SLOT_FLAGS(state) = sflags | SLOT_READY_BIT;
                    reg_slot.write(cell, state);
                    hdr.netagg.worker = 0xFFFF;
                    REPLY_HEADER(meta.epoch, meta.switch_mac, meta.switch_ip, TYPE_RESULT, empty, nelem, expmax,
                                 after, use_op)
                    TO_JOB(meta.job_index)
                }
            }
        }
    }
}

#endif
