/* Switch state: registers and counters, shared by the controls (top-level instances).
 * The control plane reads the counters by these names (switch/bmv2.py). */
#ifndef NETAGG_STATE_P4
#define NETAGG_STATE_P4

#include "config.p4"
#include "elements.p4"

/* Per job (index = job_index from the job table). */
register<bit<32>>(NETAGG_MAX_JOBS) reg_members;     /* workers in the current JOIN round */
register<bit<32>>(NETAGG_MAX_JOBS) reg_repeated;    /* members that repeated their JOIN (alive) */
/* What every packet of a job needs, in one register so that it costs one read (BMv2 pays per
 * primitive, and on a build with logging macros each one also formats its log line's arguments):
 *   epoch    the job's epoch on the wire (mod 256)
 *   tag      the switch-wide round counter when the job's current epoch began. A slot set tagged
 *            with another value belongs to an earlier epoch (or another job) and counts as empty:
 *            this is how "all slot state of the job is reset" at a new epoch without touching
 *            every slot.
 *   joined   1 once the JOIN round is complete */
#define JOB_STATE(epoch, tag, joined) ((epoch) ++ (tag) ++ (joined))
#define JOB_EPOCH(s) s[47:40]
#define JOB_TAG(s) s[39:8]
#define JOB_JOINED(s) s[7:0]
register<bit<48>>(NETAGG_MAX_JOBS) reg_job;
register<bit<32>>(1) reg_round_clock;
/* The last completed JOIN round (docs/protocol.md, "Joining", 5), for JOIN_ACKs sent again:
 *   round    the XOR of the members' incarnations (the JOIN_ACK's last word)
 *   flags    FLAG_RESUME when every member gave the same non-zero prev_round, else 0 */
#define ACK_STATE(round, flags) ((round) ++ (flags))
#define ACK_ROUND(s) s[39:8]
#define ACK_FLAGS(s) s[7:0]
register<bit<40>>(NETAGG_MAX_JOBS) reg_ack;
/* The refusal rate limit (docs/protocol.md, "Refusals"): a token bucket per job, and one more (index
 * NETAGG_MAX_JOBS) shared by unknown job ids, as GCRA keeps it: the theoretical arrival time of the
 * next refusal, in ingress_global_timestamp's microseconds. A refusal at time t is sent if
 * tat - t <= (REFUSE_BURST - 1) x REFUSE_INTERVAL_US, and then tat = max(tat, t) + REFUSE_INTERVAL_US:
 * exactly a bucket of REFUSE_BURST tokens refilled at one per REFUSE_INTERVAL_US, in one number. */
register<bit<48>>(NETAGG_MAX_JOBS + 1) reg_refuse_tat;
/* A tree: this switch's incarnation, epoch and JOIN state at the job's parent. */
register<bit<32>>(NETAGG_MAX_JOBS) reg_parent_inc;
register<bit<8>>(NETAGG_MAX_JOBS) reg_parent_epoch;
register<bit<8>>(NETAGG_MAX_JOBS) reg_parent_joined;

/* Per job and worker (index = job_index * 32 + worker). */
register<bit<32>>(NETAGG_JOB_WORKERS) reg_incarnation;
register<bit<48>>(NETAGG_JOB_WORKERS) reg_join_time;
register<bit<32>>(NETAGG_JOB_WORKERS) reg_prev_round;  /* the prev_round of the member's JOIN */
register<bit<8>>(NETAGG_JOB_WORKERS) reg_prev_epoch;   /* the epoch field of the member's JOIN */

/* Per slot set (index = 2 * slot + set), one register read and one write per contribution:
 *   seq      use number held
 *   tag      the job's JOB_TAG when written
 *   bitmap   contributors so far
 *   nelem    the use's count
 *   expmax   maximum exponent proposal (of a use completed by an OFFER: the offer's exponent)
 *   op       the use's `op` field (collective, reduction, root), from its first packet
 *   sflags   bit 0 (SLOT_READY_BIT): the use's RESULT is known (here or from the parent);
 *            bit 1 (SLOT_PAYLOAD_BIT): a contribution (or the offer, or the parent's RESULT) carried a
 *            payload: the accumulators hold the use's values (without it the RESULT is EMPTY);
 *            FLAG_FINAL: that result is final values, from an OFFER ("Recovery"; the flag its
 *            RESULTs carry, repeats' unicast RESULTs included) */
#define SLOT_STATE(seq, tag, bitmap, nelem, expmax, op, sflags) \
    ((seq) ++ (tag) ++ (bitmap) ++ (nelem) ++ (expmax) ++ (op) ++ (sflags))
#define SLOT_SEQ(s) s[151:120]
#define SLOT_TAG(s) s[119:88]
#define SLOT_BITMAP(s) s[87:56]
#define SLOT_NELEM(s) s[55:40]
#define SLOT_EXPMAX(s) s[39:24]
#define SLOT_OP(s) s[23:8]
#define SLOT_FLAGS(s) s[7:0]
#define SLOT_READY_BIT 1
#define SLOT_PAYLOAD_BIT 2
register<bit<152>>(NETAGG_SLOT_SETS) reg_slot;
/* Accumulators: one register array per element k of a packet, indexed by slot set (2 * slot + set).
 * Holds the use's values (the first payload, combined lane by lane with the later ones by the use's
 * reduction) once the use is complete, which is also the stored result sent again to a worker that
 * repeats. (One array per element rather than one big one: no index arithmetic per element, which
 * p4c turns into a temporary field each and BMv2 then copies with every packet.) */
#define DECLARE_ACCUMULATOR(k) register<bit<32>>(NETAGG_SLOT_SETS) reg_acc_##k;
FOR_EACH_ELEMENT(DECLARE_ACCUMULATOR)
/* ... and for uses of full packets (count = N), all elements in one wide value per slot set. Which of
 * the two holds a use follows from its count alone, so EMPTY packets of the use find it too. */
register<bit<NETAGG_PAYLOAD_BITS>>(NETAGG_SLOT_SETS) reg_acc_wide;

counter(NUM_DROP_REASONS, CounterType.packets) drops;
counter(NUM_EVENTS, CounterType.packets_and_bytes) events;

#endif
