/* Switch state: registers and counters, shared by the controls (top-level instances).
 * The control plane reads the counters by these names (switch/bmv2.py). */
#ifndef NETAGG_STATE_P4
#define NETAGG_STATE_P4

#include "config.p4"
#include "elements.p4"

/* Per job (index = job_index from the job table). */
register<bit<32>>(NETAGG_MAX_JOBS) reg_members;     /* workers in the current JOIN round */
register<bit<8>>(NETAGG_MAX_JOBS) reg_joined;       /* 1 once the round is complete */
register<bit<8>>(NETAGG_MAX_JOBS) reg_epoch;        /* the job's epoch on the wire (mod 256) */
/* The switch-wide round counter when the job's current epoch began. A slot set tagged with another
 * value belongs to an earlier epoch (or another job) and counts as empty: this is how "all slot state
 * of the job is reset" at a new epoch without touching every slot. */
register<bit<32>>(NETAGG_MAX_JOBS) reg_epoch_tag;
register<bit<32>>(1) reg_round_clock;
/* A tree: this switch's incarnation, epoch and JOIN state at the job's parent. */
register<bit<32>>(NETAGG_MAX_JOBS) reg_parent_inc;
register<bit<8>>(NETAGG_MAX_JOBS) reg_parent_epoch;
register<bit<8>>(NETAGG_MAX_JOBS) reg_parent_joined;

/* Per job and worker (index = job_index * 32 + worker). */
register<bit<32>>(NETAGG_JOB_WORKERS) reg_incarnation;
register<bit<48>>(NETAGG_JOB_WORKERS) reg_join_time;

/* Per slot set (index = 2 * slot + set). */
register<bit<32>>(NETAGG_SLOT_SETS) reg_seq;        /* use number held */
register<bit<32>>(NETAGG_SLOT_SETS) reg_seq_tag;    /* reg_epoch_tag of the job when written */
register<bit<32>>(NETAGG_SLOT_SETS) reg_bitmap;     /* contributors so far */
register<bit<16>>(NETAGG_SLOT_SETS) reg_nelem;      /* the use's count */
register<bit<16>>(NETAGG_SLOT_SETS) reg_expmax;     /* maximum exponent proposal */
register<bit<8>>(NETAGG_SLOT_SETS) reg_ready;       /* the use's RESULT is known (here or from the parent) */
/* Accumulators: one register array per element k of a packet, indexed by slot set (2 * slot + set).
 * Holds the sum once the use is complete, which is also the stored result sent again to a worker that
 * repeats. (One array per element rather than one big one: no index arithmetic per element, which
 * p4c turns into a temporary field each and BMv2 then copies with every packet.) */
#define DECLARE_ACCUMULATOR(k) register<bit<32>>(NETAGG_SLOT_SETS) reg_acc_##k;
FOR_EACH_ELEMENT(DECLARE_ACCUMULATOR)
/* ... and for uses of full packets (count = N), all elements in one wide value per slot set. */
register<bit<NETAGG_PAYLOAD_BITS>>(NETAGG_SLOT_SETS) reg_acc_wide;

counter(NUM_DROP_REASONS, CounterType.packets) drops;
counter(NUM_EVENTS, CounterType.packets_and_bytes) events;

#endif
