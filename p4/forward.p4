/* The plain forwarding program netagg.p4 is measured against (bench/bmv2.py): the same parser,
 * deparser and L2 forwarding, no aggregation. Every packet, netagg's included, is forwarded by MAC. */
#include <core.p4>
#include <v1model.p4>

#include "include/config.p4"
#include "include/headers.p4"
#include "include/parser.p4"
#include "controls/forward.p4"

control PlainIngress(inout headers_t hdr, inout metadata_t meta, inout standard_metadata_t sm) {
    Forward() forward;

    apply {
        forward.apply(hdr, meta, sm);
    }
}

control PlainEgress(inout headers_t hdr, inout metadata_t meta, inout standard_metadata_t sm) {
    apply {
        if (sm.mcast_grp == FLOOD_GROUP && sm.egress_port == sm.ingress_port) {
            mark_to_drop(sm);
        }
    }
}

V1Switch(NetaggParser(), NetaggVerifyChecksum(), PlainIngress(), PlainEgress(), NetaggComputeChecksum(),
         NetaggDeparser()) main;
