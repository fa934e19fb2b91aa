/* Headers (docs/protocol.md, "Header") and the metadata the controls share. */
#ifndef NETAGG_HEADERS_P4
#define NETAGG_HEADERS_P4

#include "config.p4"

typedef bit<48> mac_t;
typedef bit<32> ip4_t;

header ethernet_h {
    mac_t dst;
    mac_t src;
    bit<16> ether_type;
}

header arp_h {
    bit<16> htype;
    bit<16> ptype;
    bit<8> hlen;
    bit<8> plen;
    bit<16> oper;
    mac_t sha;
    ip4_t spa;
    mac_t tha;
    ip4_t tpa;
}

header ipv4_h {
    bit<4> version;
    bit<4> ihl;
    bit<8> diffserv;
    bit<16> total_len;
    bit<16> identification;
    bit<3> flags;
    bit<13> frag_offset;
    bit<8> ttl;
    bit<8> protocol;
    bit<16> checksum;
    ip4_t src;
    ip4_t dst;
}

header udp_h {
    bit<16> src_port;
    bit<16> dst_port;
    bit<16> length;
    bit<16> checksum;
}

/* The 24-byte netagg header, field by field as docs/protocol.md has it. */
header netagg_h {
    bit<8> version;
    bit<8> type;
    bit<8> flags;
    bit<8> epoch;
    bit<16> job;
    bit<16> worker;
    bit<1> set;
    bit<15> slot;
    bit<16> count;
    bit<32> seq;
    bit<16> exp;
    bit<16> op;            /* collective (15-12), reduction (11-8), root (7-0) */
    bit<32> bitmap;
}

/* One int32 element of the payload (network byte order, as P4 reads it). */
header element_h {
    bit<32> v;
}

/* A payload of exactly N elements, as one field (see NETAGG_PAYLOAD_BITS). */
header wide_h {
    bit<NETAGG_PAYLOAD_BITS> v;
}

struct headers_t {
    ethernet_h ethernet;
    arp_h arp;
    ipv4_h ipv4;
    udp_h udp;
    netagg_h netagg;
    element_h[NETAGG_ELEMENTS] elems;
    wide_h wide;
}

struct metadata_t {
    bit<16> to_parse;      /* elements still to extract */
    bit<32> length_diff;   /* UDP length - (32 + 4 x count): 0 when they agree */
    bit<1> is_netagg;      /* a datagram to the switch's netagg address */
    mac_t switch_mac;      /* the switch's own addresses, from the switch_addr table */
    ip4_t switch_ip;
    /* the job, from the job table */
    bit<1> job_found;
    bit<8> job_index;
    bit<15> slot_base;
    bit<16> slots;
    bit<16> workers;
    bit<32> full;          /* bitmap of all workers */
    bit<32> total_workers;
    bit<16> elements;      /* the job's elements per packet (<= NETAGG_ELEMENTS) */
    bit<8> epoch;          /* the job's state (reg_job) */
    bit<32> epoch_tag;
    bit<8> joined;
    /* a tree: the job's parent switch (from the parents table) and this switch's state there */
    bit<1> has_parent;
    mac_t parent_mac;
    ip4_t parent_ip;
    bit<16> parent_udp_port;
    bit<9> parent_port;
    bit<16> parent_worker;
    bit<32> parent_key_hi; /* the key this switch's JOINs at the parent carry */
    bit<32> parent_key_lo;
    bit<8> parent_epoch;
    bit<8> parent_joined;
    bit<1> upstream;       /* a JOIN_ACK, PENDING or RESULT from the parent */
    bit<1> to_parent;      /* egress: this replica goes to the parent */
    bit<1> offer_up;       /* a RESULT completed by an OFFER at a leaf: its parent's replica is the
                            * OFFER up (controls/egress.p4) */
    /* the sender's configured address, from the worker table */
    bit<1> worker_found;
    ip4_t worker_ip;
    bit<16> worker_port;
    /* slot state */
    bit<32> cell;          /* 2 * slot + set */
    bit<32> wbit;          /* 1 << worker */
    /* a JOIN: the job's key (from the job_keys table; 0 = none) and what the JOIN carries */
    bit<32> key_hi;
    bit<32> key_lo;
    bit<32> prev_round;    /* the JOIN's prev_round (0 without payload) */
    /* what to do with the packet */
    bit<1> drop;
    bit<8> drop_reason;
    bit<32> refuse_detail; /* a REFUSE's bitmap: the use's count (count_mismatch) or op (op_mismatch) */
    bit<1> trim;           /* egress: cut the frame to what its UDP length says (a reply whose
                            * payload headers are all valid but only `count` of them, or none,
                            * belong to it) */
}

#endif
