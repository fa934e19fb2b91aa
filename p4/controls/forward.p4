/* Ordinary traffic: an L2 switch (destination MAC -> port, the rest flooded) that also answers ARP for
 * the switch's own IPv4 address, so hosts reach the aggregator with no static neighbour entries. */
#ifndef NETAGG_FORWARD_P4
#define NETAGG_FORWARD_P4

#include "../include/headers.p4"

control Forward(inout headers_t hdr, inout metadata_t meta, inout standard_metadata_t sm) {
    action to_port(bit<9> port) {
        sm.egress_spec = port;
    }

    action flood() {
        sm.mcast_grp = FLOOD_GROUP;
    }

    /* Filled by the control plane with every host's MAC and the port it is behind. */
    table l2 {
        key = { hdr.ethernet.dst: exact; }
        actions = { to_port; flood; }
        default_action = flood();
        size = 1024;
    }

    apply {
        if (hdr.arp.isValid() && hdr.arp.oper == 1 && hdr.arp.tpa == meta.switch_ip) {
            /* ARP request for the switch: reply from where it came. */
            hdr.arp.oper = 2;
            hdr.arp.tha = hdr.arp.sha;
            hdr.arp.tpa = hdr.arp.spa;
            hdr.arp.sha = meta.switch_mac;
            hdr.arp.spa = meta.switch_ip;
            hdr.ethernet.dst = hdr.ethernet.src;
            hdr.ethernet.src = meta.switch_mac;
            sm.egress_spec = sm.ingress_port;
        } else {
            l2.apply();
        }
    }
}

#endif
