"""Topologies for netagg experiments: data (:mod:`mininet_topos.topology`) and a Mininet-free builder
with network namespaces (:mod:`mininet_topos.netns`)."""

from mininet_topos.topology import TOPOS, Host, Link, Switch, Topology, leafspine, star, tree

__all__ = ["TOPOS", "Host", "Link", "Switch", "Topology", "leafspine", "star", "tree"]
