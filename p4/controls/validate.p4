/* Every check before a datagram may touch state, in the order of docs/protocol.md ("Switch rules", 1).
 * A failed check sets meta.drop with its reason; the top ingress counts it and drops the packet. */
#ifndef NETAGG_VALIDATE_P4
#define NETAGG_VALIDATE_P4

#include "../include/headers.p4"

control Validate(inout headers_t hdr, inout metadata_t meta, inout standard_metadata_t sm) {
    action reject(bit<8> reason) {
        meta.drop = 1;
        meta.drop_reason = reason;
    }

    /* A job: the fields every packet of it needs. */
    action set_job(bit<8> job_index, bit<15> slot_base, bit<16> slots, bit<16> workers, bit<32> full,
                   bit<32> total_workers, bit<16> elements, bit<1> has_parent) {
        meta.job_found = 1;
        meta.has_parent = has_parent;
        meta.job_index = job_index;
        meta.slot_base = slot_base;
        meta.slots = slots;
        meta.workers = workers;
        meta.full = full;
        meta.total_workers = total_workers;
        meta.elements = elements;
    }

    /* wire job id -> the job's configuration (one entry per installed job). */
    table jobs {
        key = { hdr.netagg.job: exact; }
        actions = { set_job; NoAction; }
        default_action = NoAction();
        size = NETAGG_MAX_JOBS;
    }

    /* A job in a tree: its parent's MAC, IP and UDP port, the port it is behind, and this switch's
     * worker id there. A table of its own, looked up only for such jobs, so that the packets of a
     * job without a parent do not pay for five more fields. */
    action set_parent(mac_t parent_mac, ip4_t parent_ip, bit<16> parent_udp_port, bit<9> parent_port,
                      bit<16> parent_worker, bit<32> parent_key_hi, bit<32> parent_key_lo) {
        meta.parent_mac = parent_mac;
        meta.parent_ip = parent_ip;
        meta.parent_udp_port = parent_udp_port;
        meta.parent_port = parent_port;
        meta.parent_worker = parent_worker;
        meta.parent_key_hi = parent_key_hi;
        meta.parent_key_lo = parent_key_lo;
    }

    /* job index -> its parent (one entry per job that has one). */
    table parents {
        key = { meta.job_index: exact; }
        actions = { set_parent; NoAction; }
        default_action = NoAction();
        size = NETAGG_MAX_JOBS;
    }

    action set_key(bit<32> key_hi, bit<32> key_lo) {
        meta.key_hi = key_hi;
        meta.key_lo = key_lo;
    }

    /* job index -> the job's 64-bit key (docs/protocol.md, "Job keys"; one entry per job that has
     * one, none: no key). Looked up for JOINs only. */
    table job_keys {
        key = { meta.job_index: exact; }
        actions = { set_key; NoAction; }
        default_action = NoAction();
        size = NETAGG_MAX_JOBS;
    }

    action set_worker(ip4_t ip, bit<16> port) {
        meta.worker_found = 1;
        meta.worker_ip = ip;
        meta.worker_port = port;
    }

    /* (job, worker id) -> the only address the worker's packets are accepted from. */
    table workers {
        key = { meta.job_index: exact; hdr.netagg.worker: exact; }
        actions = { set_worker; NoAction; }
        default_action = NoAction();
        size = NETAGG_JOB_WORKERS;
    }

    apply {
        /* The fast path is one condition for a well-formed header and one for an acceptable
         * contribution (BMv2 pays per condition node and per action block between them); only when
         * a check fails does a chain name the first that failed, in the order of docs/protocol.md.
         * The tables are looked up before the checks that need them (each table is applied once:
         * BMv2 wants one successor per table); what they return is used only once the checks
         * before it have passed. */
        /* `op`: a known collective and reduction, and a reduction other than sum only for allreduce
         * and reduce-scatter. The length: 24 + 4 x count, or 24 with EMPTY (the parser's
         * length_diff), and an OFFER always carries its values. */
        bit<4> coll = hdr.netagg.op[15:12];
        bit<4> reduction = hdr.netagg.op[11:8];
        bool op_ok = coll <= COLL_BARRIER && reduction <= REDUCE_MIN
            && (reduction == REDUCE_SUM || coll <= COLL_REDUCE_SCATTER);
        bool basic_ok = hdr.netagg.isValid() && hdr.netagg.version == NETAGG_VERSION && op_ok
            && meta.length_diff == 0 && (hdr.netagg.flags & (FLAG_EMPTY | FLAG_OFFER)) != (FLAG_EMPTY | FLAG_OFFER);
        if (!basic_ok) {
            if (!hdr.netagg.isValid()) {
                reject(DROP_TRUNCATED);
            } else if (hdr.netagg.version != NETAGG_VERSION) {
                reject(DROP_BAD_VERSION);
            } else if (!op_ok) {
                reject(DROP_BAD_OP);
            } else {
                reject(DROP_BAD_LENGTH);
            }
        } else {
            jobs.apply();
            if (meta.has_parent == 1) {
                parents.apply();
            }
            workers.apply();  /* entries only for worker ids below the job's W */
            bit<48> job_state;
            reg_job.read(job_state, (bit<32>)meta.job_index);
            meta.epoch = JOB_EPOCH(job_state);
            meta.epoch_tag = JOB_TAG(job_state);
            meta.joined = JOB_JOINED(job_state);
            meta.wbit = 32w1 << (bit<8>)hdr.netagg.worker;
            bool from_worker = meta.worker_found == 1 && hdr.ipv4.src == meta.worker_ip
                && hdr.udp.src_port == meta.worker_port;
            bool slot_ok = hdr.netagg.slot >= meta.slot_base
                && (bit<16>)(hdr.netagg.slot - meta.slot_base) < meta.slots;
            /* a reduce-scatter's chunk belongs to a rank of the whole job, or to every worker */
            bool root_ok = coll != COLL_REDUCE_SCATTER || hdr.netagg.op[7:0] == ROOT_ALL
                || (bit<32>)hdr.netagg.op[7:0] < meta.total_workers;
            if (!(hdr.netagg.type == TYPE_CONTRIB && meta.job_found == 1 && from_worker && slot_ok && root_ok
                  && hdr.netagg.count <= meta.elements && hdr.netagg.set == hdr.netagg.seq[0:0]
                  && meta.joined != 0 && hdr.netagg.epoch == meta.epoch)) {
                if (hdr.netagg.type != TYPE_CONTRIB && hdr.netagg.type != TYPE_JOIN) {
                    /* Only a job's parent sends this switch anything else (docs/protocol.md,
                     * "Aggregation trees"): its JOIN_ACK, PENDING and RESULTs. */
                    if (meta.has_parent == 1 && hdr.ipv4.src == meta.parent_ip
                            && hdr.udp.src_port == meta.parent_udp_port) {
                        meta.upstream = 1;
                    } else {
                        reject(DROP_BAD_TYPE);
                    }
                } else if (meta.job_found == 0) {
                    reject(DROP_UNKNOWN_JOB);
                } else if (hdr.netagg.worker >= meta.workers) {
                    reject(DROP_BAD_WORKER);
                } else if (hdr.netagg.type == TYPE_CONTRIB && !root_ok) {
                    reject(DROP_BAD_OP);
                } else if (hdr.netagg.type == TYPE_JOIN) {
                    /* "Joining", 0: the key is checked before anything about the job is looked at
                     * (the source address included) or changed. */
                    if (hdr.netagg.count != 0 && hdr.netagg.count != JOIN_WORDS) {
                        reject(DROP_BAD_LENGTH);
                    } else if (hdr.netagg.seq == 0) {
                        reject(DROP_BAD_INCARNATION);
                    } else {
                        bit<32> join_key_hi = 0;
                        bit<32> join_key_lo = 0;
                        if (hdr.netagg.count == JOIN_WORDS) {
                            join_key_hi = hdr.elems[0].v;
                            join_key_lo = hdr.elems[1].v;
                            meta.prev_round = hdr.elems[2].v;
                        }
                        job_keys.apply();
                        if ((meta.key_hi != 0 || meta.key_lo != 0)
                                && (join_key_hi != meta.key_hi || join_key_lo != meta.key_lo)) {
                            reject(DROP_BAD_KEY);
                        } else if (!from_worker) {
                            reject(DROP_WRONG_SOURCE);
                        }
                    }
                } else if (!slot_ok) {
                    reject(DROP_BAD_SLOT);
                } else if (hdr.netagg.count > meta.elements) {
                    reject(DROP_BAD_LENGTH);
                } else if (hdr.netagg.set != hdr.netagg.seq[0:0]) {
                    reject(DROP_BAD_SET);
                } else if (meta.joined == 0) {
                    reject(DROP_NOT_JOINED);
                } else if (hdr.netagg.epoch != meta.epoch) {
                    reject(DROP_STALE_EPOCH);
                } else {
                    reject(DROP_WRONG_SOURCE);
                }
            }
        }
    }
}

#endif
