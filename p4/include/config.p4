/* netagg P4 program: every size and constant, with the reason for it.
 * The wire protocol these implement is docs/protocol.md; the numbers that the control plane also needs
 * (drop reasons, event counters) are read from this file by switch/bmv2.py, so keep one per line. */
#ifndef NETAGG_CONFIG_P4
#define NETAGG_CONFIG_P4

/* Elements per packet, N: SwitchML's 256-byte payload. A compile-time parameter (p4c-bm2-ss
 * -DNETAGG_ELEMENTS=32): a multiple of 8, 8 to 64 (the per-element code is unrolled by macros in
 * include/elements.p4; 64 keeps the frame under any MTU). */
#ifndef NETAGG_ELEMENTS
#define NETAGG_ELEMENTS 64
#endif

/* Slots on the switch: a job owns a range of them. 1024 slots x 2 sets x 64 elements x 4 bytes = 512 KiB
 * of accumulator registers: ample for BMv2, which forwards ~10^4-10^5 packets/s, so a window of a
 * few hundred packets per job already covers its bandwidth-delay product. */
#ifndef NETAGG_SLOTS
#define NETAGG_SLOTS 1024
#endif
#define NETAGG_SLOT_SETS (2 * NETAGG_SLOTS)
/* A packet of exactly N elements is parsed as one wide field and added with one SWAR operation over
 * all its 32-bit lanes (include/elements.p4): BMv2 does big-number arithmetic on a 2,048-bit value
 * about as fast as on a 32-bit one, so a full packet costs a few operations instead of 3 x N. */
#define NETAGG_PAYLOAD_BITS (NETAGG_ELEMENTS * 32)

/* Jobs installed at once (index into per-job registers); workers per job: the bitmap is 32 bits. */
#define NETAGG_MAX_JOBS 64
#define NETAGG_MAX_WORKERS 32
#define NETAGG_JOB_WORKERS (NETAGG_MAX_JOBS * NETAGG_MAX_WORKERS)

/* The UDP port of the protocol (docs/protocol.md, "Transport"). */
#define NETAGG_PORT 47000
#define NETAGG_VERSION 2
#define NETAGG_HEADER_BYTES 24

/* Message types. */
#define TYPE_JOIN 1
#define TYPE_JOIN_ACK 2
#define TYPE_CONTRIB 3
#define TYPE_RESULT 4
#define TYPE_PENDING 5
#define TYPE_REFUSE 6

/* Flags. */
#define FLAG_RETX 1
#define FLAG_UNICAST 2
#define FLAG_RESUME 4
#define FLAG_OFFER 8
#define FLAG_FINAL 16
#define FLAG_EMPTY 32

/* The header's `op` field (docs/protocol.md, "Header"): bits 15-12 the collective, 11-8 the reduction,
 * 7-0 the root (ROOT_ALL: a reduce-scatter use whose result goes to every worker). */
#define COLL_ALLREDUCE 0
#define COLL_REDUCE_SCATTER 1
#define COLL_ALL_GATHER 2
#define COLL_BROADCAST 3
#define COLL_BARRIER 4
#define REDUCE_SUM 0
#define REDUCE_MAX 1
#define REDUCE_MIN 2
#define ROOT_ALL 255

/* A JOIN's payload, when it has one: key_hi, key_lo, prev_round (docs/protocol.md, "Message types"). */
#define JOIN_WORDS 3
/* A JOIN_ACK's payload: slot_base, slots, elements, fan-in, total_workers, group, group_port, round. */
#define JOIN_ACK_WORDS 8

/* REFUSE reasons: the `exp` field of a REFUSE (docs/protocol.md, "Refusals"). */
#define REASON_NOT_JOINED 1
#define REASON_STALE_EPOCH 2
#define REASON_UNKNOWN_JOB 3
#define REASON_COUNT_MISMATCH 4
#define REASON_WRONG_SOURCE 5
#define REASON_BAD_KEY 6
#define REASON_OP_MISMATCH 7

/* Refusals are rate-limited per job by a token bucket of REFUSE_BURST tokens refilled at one per
 * REFUSE_INTERVAL_US (1,000 per second, bursts of 100: docs/protocol.md, "Refusals"), kept as GCRA's
 * one number per bucket (the theoretical arrival time: include/state.p4). Packets of unknown job ids
 * share the bucket after the jobs' (index NETAGG_MAX_JOBS). */
#define REFUSE_INTERVAL_US 1000
#define REFUSE_BURST 100

/* A member that has not refreshed its JOIN for this long is removed (docs/protocol.md, "Joining", 4):
 * 2 s in microseconds (ingress_global_timestamp's unit on BMv2). */
#define JOIN_REFRESH_US 2000000

/* Multicast groups: 1 floods ordinary broadcast traffic; job j's results go to group JOB_GROUP_BASE + j.
 * In a tree, that group also has a node for the parent (replica id PARENT_RID): a JOIN_ACK round's
 * replica there becomes this switch's JOIN at its parent; results are not sent up that way. */
#define PARENT_RID 65535
#define FLOOD_GROUP 1
#define JOB_GROUP_BASE 256

/* Drop reasons: index into the `drops` counter (same names and order as switch/core.py DROP_REASONS). */
#define DROP_TRUNCATED 0
#define DROP_BAD_VERSION 1
#define DROP_BAD_TYPE 2
#define DROP_BAD_OP 3
#define DROP_BAD_LENGTH 4
#define DROP_UNKNOWN_JOB 5
#define DROP_BAD_WORKER 6
#define DROP_BAD_SLOT 7
#define DROP_BAD_SET 8
#define DROP_BAD_INCARNATION 9
#define DROP_BAD_KEY 10
#define DROP_NOT_JOINED 11
#define DROP_STALE_EPOCH 12
#define DROP_WRONG_SOURCE 13
#define DROP_STALE_SEQ 14
#define DROP_COUNT_MISMATCH 15
#define DROP_OP_MISMATCH 16
#define NUM_DROP_REASONS 17

/* Events: index into the `events` counter (same names as the Python switch's counters). */
#define EV_PACKETS_IN 0
#define EV_JOINS 1
#define EV_CONTRIBUTIONS 2
#define EV_COMPLETIONS 3
#define EV_REPEATS 4
#define EV_RETRANSMISSIONS 5
#define EV_RESULTS_RESENT 6
#define EV_PENDING_SENT 7
#define EV_EPOCHS 8
#define EV_JOIN_EXPIRED 9
#define EV_PACKETS_OUT 10
#define EV_FROM_PARENT 11
#define EV_PARTIALS_SENT 12
#define EV_PARTIALS_RESENT 13
#define EV_PARENT_STALE 14
#define EV_PARENT_JOINS_SENT 15
#define EV_OFFERS 16
#define EV_RECOVERIES 17
#define EV_REFUSALS 18
#define EV_REFUSALS_SUPPRESSED 19
#define EV_OFFERS_SENT 20
#define EV_PARENT_REJOINS 21
#define NUM_EVENTS 22

#endif
