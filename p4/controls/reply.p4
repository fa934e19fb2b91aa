/* Turning the received datagram into the switch's reply: the header and payload are rewritten in place,
 * the lengths follow `count`, and the addresses are swapped (unicast back to the sender) or left for
 * the egress to set per replica (results and JOIN_ACKs to every worker of a job). */
#ifndef NETAGG_REPLY_P4
#define NETAGG_REPLY_P4

#include "../include/headers.p4"
#include "../include/elements.p4"

#define CLEAR_ELEMENT(k) hdr.elems[k].setInvalid();

/* Header fields of a reply; the payload is the caller's. Lengths from `count`; UDP checksum 0.
 * (Controls nested in Aggregate/JoinBarrier take fields, not the metadata struct: p4c 1.2.4's BMv2
 * backend emits a broken copy of a struct passed two levels down.) */
control ReplyHeader(inout headers_t hdr, in bit<8> epoch, in mac_t switch_mac, in ip4_t switch_ip,
                    in bit<8> type, in bit<8> flags, in bit<16> count, in bit<16> exp, in bit<32> bitmap) {
    apply {
        hdr.netagg.type = type;
        hdr.netagg.flags = flags;
        hdr.netagg.epoch = epoch;
        hdr.netagg.count = count;
        hdr.netagg.exp = exp;
        hdr.netagg.bitmap = bitmap;
        hdr.udp.length = 8 + NETAGG_HEADER_BYTES + (count << 2);
        hdr.udp.checksum = 0;
        hdr.ipv4.total_len = 20 + hdr.udp.length;
        hdr.ipv4.ttl = 64;
        hdr.ipv4.src = switch_ip;
        hdr.udp.src_port = NETAGG_PORT;
        hdr.ethernet.src = switch_mac;
    }
}

/* Back to the sender, out of the port it came in by. */
control ToSender(inout headers_t hdr, inout standard_metadata_t sm) {
    apply {
        hdr.ethernet.dst = hdr.ethernet.src;
        hdr.ipv4.dst = hdr.ipv4.src;
        hdr.udp.dst_port = hdr.udp.src_port;
        sm.egress_spec = sm.ingress_port;
    }
}

/* To every worker of the job: the egress rewrites each replica's destination. */
control ToJob(in bit<8> job_index, inout standard_metadata_t sm) {
    apply {
        sm.mcast_grp = JOB_GROUP_BASE + (bit<16>)job_index;
    }
}

/* A header-only reply (PENDING). */
control NoPayload(inout headers_t hdr) {
    apply {
        FOR_EACH_ELEMENT(CLEAR_ELEMENT)
        hdr.wide.setInvalid();
    }
}

#endif
