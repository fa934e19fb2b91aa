/* The JOIN barrier (docs/protocol.md, "Joining"): members, incarnations, refresh-based expiry, epochs.
 * A JOIN that reaches this control has passed Validate (job, worker, incarnation, source address). */
#ifndef NETAGG_JOIN_P4
#define NETAGG_JOIN_P4

#include "../include/headers.p4"
#include "../include/elements.p4"
#include "../include/state.p4"
#include "reply.p4"

/* Rule 4: a member whose last JOIN is older than JOIN_REFRESH_US leaves the round. */
#define EXPIRE_MEMBER(u)                                                                        \
    if ((bit<16>)u < meta.workers && (members & (32w1 << u)) != 0) {                          \
        reg_join_time.read(t, base + u);                                                       \
        if (now - t > JOIN_REFRESH_US) {                                                       \
            members = members & ~(32w1 << u);                                                  \
            events.count(EV_JOIN_EXPIRED);                                                     \
        }                                                                                      \
    }

/* Rule 5, for every member u: the round's XOR of incarnations, whether every member's prev_round
 * is that of worker 0, and the latest epoch (serial order mod 256) a member's JOIN carried. */
#define ROUND_MEMBER(u)                                                                         \
    if ((bit<16>)u < meta.workers) {                                                           \
        reg_incarnation.read(x, base + u);                                                     \
        round = round ^ x;                                                                     \
        reg_prev_round.read(x, base + u);                                                      \
        if (x != first_prev) {                                                                 \
            mixed = true;                                                                      \
        }                                                                                      \
        reg_prev_epoch.read(e, base + u);                                                      \
        if (e != 0 && e - latest != 0 && e - latest < 128) {                                   \
            latest = e;                                                                        \
        }                                                                                      \
    }

control JoinBarrier(inout headers_t hdr, inout metadata_t meta, inout standard_metadata_t sm) {
    /* The JOIN_ACK payload: slot_base, slots, elements, fan-in, total workers, group, group port,
     * round. */
    action ack_payload(bit<32> round) {
        hdr.elems[0].setValid();
        hdr.elems[0].v = (bit<32>)meta.slot_base;
        hdr.elems[1].setValid();
        hdr.elems[1].v = (bit<32>)meta.slots;
        hdr.elems[2].setValid();
        hdr.elems[2].v = (bit<32>)meta.elements;
        hdr.elems[3].setValid();
        hdr.elems[3].v = (bit<32>)meta.workers;
        hdr.elems[4].setValid();
        hdr.elems[4].v = meta.total_workers;
        hdr.elems[5].setValid();
        hdr.elems[5].v = 0;   /* results come by unicast, replicated by the switch */
        hdr.elems[6].setValid();
        hdr.elems[6].v = 0;
        hdr.elems[7].setValid();
        hdr.elems[7].v = round;
    }

    apply {
        bit<32> job = (bit<32>)meta.job_index;
        bit<32> base = job * NETAGG_MAX_WORKERS;
        bit<32> idx = base + (bit<32>)hdr.netagg.worker;
        bit<48> now = sm.ingress_global_timestamp;
        bit<48> t;
        bit<32> incarnation;
        bit<32> members;
        bit<8> joined = meta.joined;
        reg_incarnation.read(incarnation, idx);
        reg_members.read(members, job);
        events.count(EV_JOINS);
        NO_PAYLOAD  /* a JOIN may carry elements; no reply to it does */
        hdr.netagg.slot = 0;
        hdr.netagg.set = 0;
        bit<32> repeated;  /* members that have repeated their JOIN since they joined (alive) */
        reg_repeated.read(repeated, job);
        bool check = false;
        if ((members & meta.wbit) != 0 && incarnation == hdr.netagg.seq) {
            /* Rule 1: a repeat of a JOIN we have refreshes the member. */
            reg_join_time.write(idx, now);
            repeated = repeated | meta.wbit;
            if (joined == 1) {
                TO_SENDER
                bit<40> ack;
                reg_ack.read(ack, job);
                ack_payload(ACK_ROUND(ack));
                REPLY_HEADER(meta.epoch, meta.switch_mac, meta.switch_ip, TYPE_JOIN_ACK, ACK_FLAGS(ack),
                             JOIN_ACK_WORDS, 0, meta.full, 0)
            } else if (members == meta.full) {
                check = true;  /* a mixed round that waited for this repeat */
            } else {
                TO_SENDER
                REPLY_HEADER(meta.epoch, meta.switch_mac, meta.switch_ip, TYPE_PENDING, 0, 0, 0, members, 0)
            }
        } else {
            if (joined == 1) {
                /* Rule 2: a new incarnation after a complete round starts a new round. */
                joined = 0;
                members = 0;
                repeated = 0;
            }
            /* Rule 3 */
            reg_incarnation.write(idx, hdr.netagg.seq);
            reg_prev_round.write(idx, meta.prev_round);
            reg_prev_epoch.write(idx, hdr.netagg.epoch);
            reg_join_time.write(idx, now);
            members = members | meta.wbit;
            repeated = repeated & ~meta.wbit;
            FOR_EACH_WORKER(EXPIRE_MEMBER)
            if (members != meta.full) {
                TO_SENDER
                REPLY_HEADER(meta.epoch, meta.switch_mac, meta.switch_ip, TYPE_PENDING, 0, 0, 0, members, 0)
            } else {
                check = true;
            }
        }
        if (check) {
            /* Rule 5: the round's name, whether every member continues one earlier round, and the
             * latest epoch a member had */
            bit<32> round = 0;
            bit<32> first_prev;
            bit<32> x;
            bool mixed = false;
            bit<8> e;
            bit<8> latest = meta.epoch;
            reg_prev_round.read(first_prev, base);
            FOR_EACH_WORKER(ROUND_MEMBER)
            if (mixed && repeated != meta.full) {
                /* members continuing different rounds: each must have repeated its JOIN (a stray or
                 * dead member cannot break the others' lineage) */
                TO_SENDER
                REPLY_HEADER(meta.epoch, meta.switch_mac, meta.switch_ip, TYPE_PENDING, 0, 0, 0, members, 0)
            } else {
                /* the round is complete: a new epoch, whose slot state starts empty */
                bit<32> clock;
                reg_round_clock.read(clock, 0);
                clock = clock + 1;
                reg_round_clock.write(0, clock);
                meta.epoch_tag = clock;
                /* a new round here is a new round of this switch at its parent (if it has one): the
                 * JOIN_ACKs' replica for the parent becomes that JOIN in the egress */
                bit<32> parent_incarnation;
                random(parent_incarnation, 1, 0xFFFFFFFF);
                reg_parent_inc.write(job, parent_incarnation);
                reg_parent_joined.write(job, 0);
                joined = 1;
                events.count(EV_EPOCHS);
                bit<8> ack_flags = 0;
                if (first_prev != 0 && !mixed) {
                    ack_flags = FLAG_RESUME;
                    round = first_prev;  /* a resumed round keeps its lineage's name */
                }
                /* the epoch after the latest the switch or a member has seen, never 0 */
                if (latest == 255) {
                    meta.epoch = 1;
                } else {
                    meta.epoch = latest + 1;
                }
                reg_ack.write(job, ACK_STATE(round, ack_flags));
                ack_payload(round);
                /* worker and seq (the incarnation) are set per replica by the egress */
                REPLY_HEADER(meta.epoch, meta.switch_mac, meta.switch_ip, TYPE_JOIN_ACK, ack_flags,
                             JOIN_ACK_WORDS, 0, meta.full, 0)
                TO_JOB(meta.job_index)
            }
        }
        reg_repeated.write(job, repeated);
        reg_members.write(job, members);
        reg_job.write(job, JOB_STATE(meta.epoch, meta.epoch_tag, joined));
    }
}

#endif
