/* Turning the received datagram into the switch's reply: the header and payload are rewritten in place,
 * the lengths follow `count`, and the addresses are swapped (unicast back to the sender) or left for
 * the egress to set per replica (results and JOIN_ACKs to every worker of a job).
 *
 * These are statement macros, not controls. p4c inlines a control that takes the headers struct with a
 * copy of every header in it: the 64 element headers and the wide payload became 77 more headers in
 * the packet header vector, copied in and out around each call, and BMv2 resets and (for each replica)
 * copies every header of the vector for every packet. Arguments are evaluated where they appear in the
 * body; no call passes a header field that the body writes before reading it (FromParent passes
 * hdr.netagg.count and hdr.netagg.exp, which the body sets to themselves). */
#ifndef NETAGG_REPLY_P4
#define NETAGG_REPLY_P4

#include "../include/headers.p4"
#include "../include/elements.p4"

#define CLEAR_ELEMENT(k) hdr.elems[k].setInvalid();

/* Header fields of a reply; the payload is the caller's. Lengths from COUNT (none with FLAG_EMPTY in
 * FLAGS); UDP checksum 0. OP: the use's `op` for a RESULT, 0 for every other type. */
#define REPLY_HEADER(EPOCH, SWITCH_MAC, SWITCH_IP, TYPE, FLAGS, COUNT, EXP, BITMAP, OP)       \
    hdr.netagg.type = TYPE;                                                                  \
    hdr.netagg.flags = FLAGS;                                                                \
    hdr.netagg.epoch = EPOCH;                                                                \
    hdr.netagg.count = COUNT;                                                                \
    hdr.netagg.exp = EXP;                                                                    \
    hdr.netagg.op = OP;                                                                      \
    hdr.netagg.bitmap = BITMAP;                                                              \
    hdr.udp.length = 8 + NETAGG_HEADER_BYTES + PAYLOAD_BYTES;                                \
    hdr.udp.checksum = 0;                                                                    \
    hdr.ipv4.total_len = 20 + hdr.udp.length;                                                \
    hdr.ipv4.ttl = 64;                                                                       \
    hdr.ipv4.src = SWITCH_IP;                                                                \
    hdr.udp.src_port = NETAGG_PORT;                                                          \
    hdr.ethernet.src = SWITCH_MAC;

/* The payload's bytes by the header's count and flags: 4 x count, 0 with EMPTY (without a branch: the
 * mask is all ones unless the EMPTY bit, bit 5, is set). */
#define PAYLOAD_BYTES                                                                        \
    ((hdr.netagg.count << 2) & (16w0 - (bit<16>)((~hdr.netagg.flags >> 5) & 1)))

/* Back to the sender, out of the port it came in by (before REPLY_HEADER, which sets the source). */
#define TO_SENDER                                                                            \
    hdr.ethernet.dst = hdr.ethernet.src;                                                     \
    hdr.ipv4.dst = hdr.ipv4.src;                                                             \
    hdr.udp.dst_port = hdr.udp.src_port;                                                     \
    sm.egress_spec = sm.ingress_port;

/* To every worker of the job: the egress rewrites each replica's destination. */
#define TO_JOB(JOB_INDEX) sm.mcast_grp = JOB_GROUP_BASE + (bit<16>)(JOB_INDEX);

/* A header-only reply (PENDING, JOIN, REFUSE). */
#define NO_PAYLOAD                                                                           \
    FOR_EACH_ELEMENT(CLEAR_ELEMENT)                                                          \
    hdr.wide.setInvalid();

/* A reply whose payload headers are all valid but only those `count` (or, EMPTY, none) say are its: the
 * egress cuts the frame to its UDP length (truncate: one primitive, where making the headers past
 * `count` invalid takes one each, and no action may do that conditionally). */
#define TRIM meta.trim = 1;

#endif
