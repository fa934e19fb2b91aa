/* netagg: SwitchML-style in-network aggregation for BMv2 simple_switch (v1model).
 *
 * The wire protocol is docs/protocol.md, the same as the Python switch's (switch/core.py); hosts, the
 * DDP hook and the controller work unchanged over either. This file only wires the parts together:
 *   include/config.p4   sizes and constants        controls/validate.p4   checks, job and worker tables
 *   include/headers.p4  headers, metadata          controls/join.p4       JOIN barrier, epochs
 *   include/parser.p4   parser, deparser, checksum controls/aggregate.p4  slots, sets, accumulators
 *   include/state.p4    registers, counters        controls/reply.p4      reply building
 *   include/elements.p4 per-element unrolling      controls/forward.p4    L2 forwarding, ARP
 *                                                  controls/parent.p4     aggregation trees
 *                                                  controls/refuse.p4     REFUSE, rate-limited
 *                                                  controls/egress.p4     per-replica rewrite
 * Build: make p4 (p4c-bm2-ss; output in build/p4/). */
#include <core.p4>
#include <v1model.p4>

#include "include/config.p4"
#include "include/headers.p4"
#include "include/state.p4"
#include "include/parser.p4"
#include "controls/forward.p4"
#include "controls/validate.p4"
#include "controls/join.p4"
#include "controls/parent.p4"
#include "controls/aggregate.p4"
#include "controls/refuse.p4"
#include "controls/egress.p4"

control NetaggIngress(inout headers_t hdr, inout metadata_t meta, inout standard_metadata_t sm) {
    Forward() forward;
    Validate() validate;
    JoinBarrier() join;
    Aggregate() aggregate;
    FromParent() from_parent;
    Refuse() refuse;

    action set_switch_addr(mac_t mac, ip4_t ip) {
        meta.switch_mac = mac;
        meta.switch_ip = ip;
    }

    /* The switch's own MAC and IPv4 address (the default action, set by the control plane): netagg
     * datagrams to that address and port are aggregated, all other traffic is forwarded. */
    table switch_addr {
        actions = { set_switch_addr; }
        default_action = set_switch_addr(0, 0);
        size = 1;
    }

    apply {
        switch_addr.apply();
        if (hdr.udp.isValid() && hdr.udp.dst_port == NETAGG_PORT && hdr.ipv4.dst == meta.switch_ip) {
            meta.is_netagg = 1;
            events.count(EV_PACKETS_IN);
            validate.apply(hdr, meta, sm);
            /* the contribution first: one condition node on the path most packets take */
            if (meta.drop == 0 && meta.upstream == 0 && hdr.netagg.type == TYPE_CONTRIB) {
                aggregate.apply(hdr, meta, sm);
            } else if (meta.drop == 0 && meta.upstream == 1) {
                from_parent.apply(hdr, meta, sm);
            } else if (meta.drop == 0) {
                join.apply(hdr, meta, sm);
            }
            if (meta.drop == 1) {
                drops.count((bit<32>)meta.drop_reason);
                refuse.apply(hdr, meta, sm);  /* a REFUSE to the sender, or nothing */
            }
        } else {
            forward.apply(hdr, meta, sm);
        }
    }
}

V1Switch(NetaggParser(), NetaggVerifyChecksum(), NetaggIngress(), NetaggEgress(), NetaggComputeChecksum(),
         NetaggDeparser()) main;
