/* Parser, deparser and checksums. Ordinary traffic is parsed as far as Ethernet/IPv4/UDP (or ARP) and
 * forwarded; a UDP datagram to the netagg port is parsed into its header and `count` elements when its
 * length agrees (the ingress checks every field in the order docs/protocol.md gives). */
#ifndef NETAGG_PARSER_P4
#define NETAGG_PARSER_P4

#include "headers.p4"

const bit<16> ETHERTYPE_IPV4 = 0x0800;
const bit<16> ETHERTYPE_ARP = 0x0806;
const bit<8> PROTO_UDP = 17;

parser NetaggParser(packet_in pkt, out headers_t hdr, inout metadata_t meta,
                    inout standard_metadata_t sm) {
    state start {
        pkt.extract(hdr.ethernet);
        transition select(hdr.ethernet.ether_type) {
            ETHERTYPE_IPV4: parse_ipv4;
            ETHERTYPE_ARP: parse_arp;
            default: accept;
        }
    }

    state parse_arp {
        pkt.extract(hdr.arp);
        transition accept;
    }

    state parse_ipv4 {
        pkt.extract(hdr.ipv4);
        /* IPv4 options and fragments are not netagg's: forward them untouched. */
        transition select(hdr.ipv4.ihl, hdr.ipv4.frag_offset, hdr.ipv4.protocol) {
            (5, 0, PROTO_UDP): parse_udp;
            default: accept;
        }
    }

    state parse_udp {
        pkt.extract(hdr.udp);
        transition select(hdr.udp.dst_port) {
            NETAGG_PORT: check_length;
            default: accept;
        }
    }

    /* Shorter than the netagg header: the ingress drops it as `truncated`. */
    state check_length {
        transition select(hdr.udp.length) {
            16w0 &&& 16w0xFFE0: accept;  /* < 32 = 8 (UDP) + 24 */
            default: parse_netagg;
        }
    }

    state parse_netagg {
        pkt.extract(hdr.netagg);
        transition select(hdr.netagg.flags & FLAG_EMPTY) {
            0: parse_payload;
            default: parse_empty;
        }
    }

    /* EMPTY: the datagram is the header alone, whatever `count` says (docs/protocol.md, "Header"). */
    state parse_empty {
        meta.length_diff = (bit<32>)hdr.udp.length - 32;
        transition accept;
    }

    state parse_payload {
        /* Elements are extracted only when the datagram is exactly 24 + 4 x count bytes and count fits
         * the stack; otherwise the ingress drops the packet (bad_length) before looking at them. */
        meta.length_diff = ((bit<32>)hdr.udp.length - 32) - ((bit<32>)hdr.netagg.count << 2);
        meta.to_parse = hdr.netagg.count;
        transition select(meta.length_diff, hdr.netagg.count) {
            (0, 0): accept;
            (0, NETAGG_ELEMENTS): parse_wide;
            (0, _): check_count;
            default: accept;
        }
    }

    state parse_wide {
        pkt.extract(hdr.wide);
        transition accept;
    }

    state check_count {
        transition select(hdr.netagg.count <= NETAGG_ELEMENTS) {
            true: parse_element;
            false: accept;
        }
    }

    state parse_element {
        pkt.extract(hdr.elems.next);
        meta.to_parse = meta.to_parse - 1;
        transition select(meta.to_parse) {
            0: accept;
            default: parse_element;
        }
    }
}

control NetaggDeparser(packet_out pkt, in headers_t hdr) {
    apply {
        pkt.emit(hdr.ethernet);
        pkt.emit(hdr.arp);
        pkt.emit(hdr.ipv4);
        pkt.emit(hdr.udp);
        pkt.emit(hdr.netagg);
        pkt.emit(hdr.elems);
        pkt.emit(hdr.wide);
    }
}

control NetaggVerifyChecksum(inout headers_t hdr, inout metadata_t meta) {
    apply { }
}

/* Replies the switch builds get a fresh IPv4 checksum; their UDP checksum is 0 (allowed in IPv4). */
control NetaggComputeChecksum(inout headers_t hdr, inout metadata_t meta) {
    apply {
        update_checksum(
            hdr.ipv4.isValid(),
            { hdr.ipv4.version, hdr.ipv4.ihl, hdr.ipv4.diffserv, hdr.ipv4.total_len,
              hdr.ipv4.identification, hdr.ipv4.flags, hdr.ipv4.frag_offset, hdr.ipv4.ttl,
              hdr.ipv4.protocol, hdr.ipv4.src, hdr.ipv4.dst },
            hdr.ipv4.checksum,
            HashAlgorithm.csum16);
    }
}

#endif
