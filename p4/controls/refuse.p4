/* Refusals (docs/protocol.md, "Refusals"): a JOIN or CONTRIB dropped for a reason its sender can act
 * on is answered, rate-limited per job, with a REFUSE made of the dropped datagram itself: its header
 * with the reason in `exp`, no payload, back to its source. It is never larger than what it answers,
 * and there is at most one per received datagram. Only reasons that Validate and Aggregate give JOINs
 * and CONTRIBs are refused, so a switch's own message types are never answered. */
#ifndef NETAGG_REFUSE_P4
#define NETAGG_REFUSE_P4

#include "../include/headers.p4"
#include "../include/elements.p4"
#include "../include/state.p4"
#include "reply.p4"

control Refuse(inout headers_t hdr, inout metadata_t meta, inout standard_metadata_t sm) {
    apply {
        bit<16> reason = 0;
        if (meta.drop_reason == DROP_NOT_JOINED) {
            reason = REASON_NOT_JOINED;
        } else if (meta.drop_reason == DROP_STALE_EPOCH) {
            reason = REASON_STALE_EPOCH;
        } else if (meta.drop_reason == DROP_UNKNOWN_JOB) {
            reason = REASON_UNKNOWN_JOB;
        } else if (meta.drop_reason == DROP_COUNT_MISMATCH) {
            reason = REASON_COUNT_MISMATCH;
        } else if (meta.drop_reason == DROP_WRONG_SOURCE) {
            reason = REASON_WRONG_SOURCE;
        } else if (meta.drop_reason == DROP_BAD_KEY) {
            reason = REASON_BAD_KEY;
        } else if (meta.drop_reason == DROP_OP_MISMATCH) {
            reason = REASON_OP_MISMATCH;
        }
        bool answer = false;
        if (reason != 0) {
            /* the job's token bucket (unknown job ids share one), as GCRA keeps it (state.p4) */
            bit<32> bucket = NETAGG_MAX_JOBS;
            if (meta.job_found == 1) {
                bucket = (bit<32>)meta.job_index;
            }
            bit<48> now = sm.ingress_global_timestamp;
            bit<48> tat;
            reg_refuse_tat.read(tat, bucket);
            if (tat <= now) {
                answer = true;
                tat = now + REFUSE_INTERVAL_US;
            } else if (tat - now <= (REFUSE_BURST - 1) * REFUSE_INTERVAL_US) {
                answer = true;
                tat = tat + REFUSE_INTERVAL_US;
            }
            if (answer) {
                reg_refuse_tat.write(bucket, tat);
                events.count(EV_REFUSALS);
            } else {
                events.count(EV_REFUSALS_SUPPRESSED);
            }
        }
        if (answer) {
            /* job, worker, slot (with its set bit) and seq stay the dropped packet's */
            bit<8> epoch = 0;
            if (meta.job_found == 1) {
                epoch = meta.epoch;
            }
            /* the detail: the use's count (count_mismatch) or op (op_mismatch), the refused packet's epoch (not_joined,
             * stale_epoch: a worker tells a refusal of its current round from a late one) */
            bit<32> detail = 0;
            if (reason == REASON_COUNT_MISMATCH || reason == REASON_OP_MISMATCH) {
                detail = meta.refuse_detail;
            } else if (reason == REASON_NOT_JOINED || reason == REASON_STALE_EPOCH) {
                detail = (bit<32>)hdr.netagg.epoch;
            }
            TO_SENDER
            NO_PAYLOAD
            REPLY_HEADER(epoch, meta.switch_mac, meta.switch_ip, TYPE_REFUSE, 0, 0, reason, detail, 0)
        } else {
            mark_to_drop(sm);
        }
    }
}

#endif
