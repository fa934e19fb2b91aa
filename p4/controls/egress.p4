/* Egress: each replica of a job's RESULT or JOIN_ACK gets its worker's addresses (and, for a JOIN_ACK,
 * the worker id and its incarnation; for a reduce-scatter's RESULT, EMPTY unless the worker owns the
 * chunk); flooded copies never go back out of the port they came in by; a reply marked TRIM is cut to
 * its UDP length. */
#ifndef NETAGG_EGRESS_P4
#define NETAGG_EGRESS_P4

#include "../include/headers.p4"
#include "../include/state.p4"
#include "../include/elements.p4"
#include "reply.p4"
#include "parent.p4"

control NetaggEgress(inout headers_t hdr, inout metadata_t meta, inout standard_metadata_t sm) {
    action to_worker(mac_t mac, ip4_t ip, bit<16> port) {
        hdr.ethernet.dst = mac;
        hdr.ipv4.dst = ip;
        hdr.udp.dst_port = port;
        events.count(EV_PACKETS_OUT);
    }

    action unaddressed() {
        events.count(EV_PACKETS_OUT);
    }

    action to_parent(mac_t mac, ip4_t ip, bit<16> port, bit<16> parent_worker, bit<32> parent_key_hi,
                     bit<32> parent_key_lo) {
        hdr.ethernet.dst = mac;
        hdr.ipv4.dst = ip;
        hdr.udp.dst_port = port;
        meta.to_parent = 1;
        meta.parent_worker = parent_worker;
        meta.parent_key_hi = parent_key_hi;
        meta.parent_key_lo = parent_key_lo;
    }

    /* (job group, PARENT_RID) -> the parent's addresses, this switch's worker id there and the job's
     * key there. */
    table parent_replicas {
        key = { sm.mcast_grp: exact; }
        actions = { to_parent; NoAction; }
        default_action = NoAction();
        size = NETAGG_MAX_JOBS;
    }

    /* (job group, replica id = worker + 1) -> the worker's addresses. */
    table replicas {
        key = { sm.mcast_grp: exact; sm.egress_rid: exact; }
        actions = { to_worker; unaddressed; }
        default_action = unaddressed();
        size = NETAGG_JOB_WORKERS;
    }

    apply {
        /* most frequent first: a result's or JOIN_ACK's replica for a worker */
        if (sm.mcast_grp >= JOB_GROUP_BASE && sm.egress_rid != PARENT_RID) {
            replicas.apply();  /* both its actions count the packet out */
            bit<16> worker = sm.egress_rid - 1;
            if (hdr.netagg.type == TYPE_RESULT && hdr.netagg.op[15:12] == COLL_REDUCE_SCATTER
                    && hdr.netagg.op[7:0] != ROOT_ALL && meta.has_parent == 0
                    && worker != (bit<16>)hdr.netagg.op[7:0] && (hdr.netagg.flags & FLAG_EMPTY) == 0) {
                /* a reduce-scatter chunk's result goes to its owner; every other worker gets the
                 * same header, EMPTY (docs/protocol.md, "Switch rules", 5) */
                hdr.netagg.flags = hdr.netagg.flags | FLAG_EMPTY;
                hdr.udp.length = 8 + NETAGG_HEADER_BYTES;
                hdr.ipv4.total_len = 20 + hdr.udp.length;
                TRIM
            } else if (hdr.netagg.type == TYPE_JOIN_ACK) {
                bit<32> incarnation;
                reg_incarnation.read(incarnation,
                    (bit<32>)(sm.mcast_grp - JOB_GROUP_BASE) * NETAGG_MAX_WORKERS + (bit<32>)worker);
                hdr.netagg.worker = worker;
                hdr.netagg.seq = incarnation;
            }
        } else if (sm.mcast_grp >= JOB_GROUP_BASE) {
            parent_replicas.apply();
            bit<32> job = (bit<32>)(sm.mcast_grp - JOB_GROUP_BASE);
            bit<8> joined_there;
            reg_parent_joined.read(joined_there, job);
            bool offer = meta.to_parent == 1 && meta.offer_up == 1;
            if (meta.to_parent == 1 && (hdr.netagg.type == TYPE_JOIN_ACK || (offer && joined_there != 1))) {
                /* the round just completed here, or an offer before the parent acknowledged this
                 * switch: this switch's JOIN at its parent */
                bit<32> incarnation;
                reg_parent_inc.read(incarnation, job);
                NO_PAYLOAD
                PARENT_JOIN_PAYLOAD(meta.parent_key_hi, meta.parent_key_lo)
                hdr.netagg.type = TYPE_JOIN;
                hdr.netagg.flags = 0;
                hdr.netagg.epoch = 0;
                hdr.netagg.worker = meta.parent_worker;
                hdr.netagg.slot = 0;
                hdr.netagg.set = 0;
                hdr.netagg.seq = incarnation;
                hdr.netagg.exp = 0;
                hdr.netagg.op = 0;
                hdr.netagg.bitmap = 0;
                hdr.udp.length = 8 + NETAGG_HEADER_BYTES + 4 * JOIN_WORDS;
                hdr.ipv4.total_len = 20 + hdr.udp.length;
                events.count(EV_PARENT_JOINS_SENT);
                events.count(EV_PACKETS_OUT);
            } else if (offer) {
                /* a use completed here by an OFFER: the offer goes up as this switch's own (its
                 * values, count and exponent; the parent's epoch, this switch's worker id there) */
                bit<8> epoch_there;
                reg_parent_epoch.read(epoch_there, job);
                hdr.netagg.type = TYPE_CONTRIB;
                hdr.netagg.flags = FLAG_OFFER | (hdr.netagg.flags & FLAG_FINAL);
                hdr.netagg.epoch = epoch_there;
                hdr.netagg.worker = meta.parent_worker;
                hdr.netagg.bitmap = 0;
                if (hdr.netagg.op[15:12] == COLL_REDUCE_SCATTER) {
                    hdr.netagg.op[7:0] = ROOT_ALL;  /* as its partials go up (parent.p4) */
                }
                events.count(EV_OFFERS_SENT);
                events.count(EV_PACKETS_OUT);
            } else {
                mark_to_drop(sm);  /* results are not sent up this way */
            }
        } else if (sm.mcast_grp == FLOOD_GROUP && sm.egress_port == sm.ingress_port) {
            mark_to_drop(sm);
        } else if (meta.is_netagg == 1) {
            events.count(EV_PACKETS_OUT);
        }
        if (meta.trim == 1) {
            truncate((bit<32>)hdr.udp.length + 34);  /* Ethernet (14) and IPv4 (20) before it */
        }
    }
}

#endif
