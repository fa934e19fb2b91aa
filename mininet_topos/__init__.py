"""Topologies for netagg experiments: data and roles (:mod:`mininet_topos.topology`), a Mininet-free
builder with network namespaces (:mod:`mininet_topos.netns`), the Mininet one (:mod:`mininet_topos.mn`)
and the experiment runner (:mod:`mininet_topos.experiment`)."""

from mininet_topos.topology import TOPOS, Host, Link, Role, Switch, Topology, leafspine, star, tree

__all__ = ["TOPOS", "Host", "Link", "Role", "Switch", "Topology", "leafspine", "star", "tree"]
