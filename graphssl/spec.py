"""What a validated pipeline graph is made of: nodes, data edges, module references.

:func:`graphssl.graph.build_graph` makes a :class:`GraphSpec` from the
``nodes`` section; the executor, the trainer and the picture read it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import networkx as nx
from torch import nn

from graphssl.component import Component, ComponentConfig, Out, Owner, role_of
from graphssl.errors import Problem
from graphssl.ports import IMAGES

SOURCE = "batch"
SOURCE_OUTPUTS = {"images": Out(IMAGES, "training images: resized, channel-replicated, normalised")}

Ref = tuple[str, str]  # (node, port)


@dataclass(frozen=True)
class ModuleRef:
    """A module named in a pipeline: a node's own (``student``) or an owner's copy of one (``teacher.student``)."""

    node: str
    owner: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ModuleRef":
        owner, dot, node = str(text).partition(".")
        return cls(node, owner) if dot else cls(owner)

    @property
    def root(self) -> str:
        """The node that holds the module: the owner, for a copy."""
        return self.owner or self.node

    def resolve(self, modules: Mapping[str, nn.Module]) -> nn.Module:
        if self.owner is None:
            return modules[self.node]
        owner = modules[self.owner]
        if not isinstance(owner, Owner):
            raise TypeError(f"{self.owner!r} ({type(owner).__name__}) holds no module copies")
        return owner.copy_of(self.node)

    def __str__(self) -> str:
        return f"{self.owner}.{self.node}" if self.owner else self.node


@dataclass(frozen=True)
class ModuleEdge:
    """Node ``user`` runs or reads the module ``ref``: as a call node (``via`` "call") or through a config field
    of an owner or evaluator (``via`` the field's name)."""

    user: str
    ref: ModuleRef
    via: str


@dataclass
class NodeSpec:
    name: str
    cls: type[Component]
    config: ComponentConfig | None  # None for call nodes (they use the called node's config)
    call: ModuleRef | None = None  # the module this node calls ("student" or "teacher.student")
    inputs: dict[str, Ref | list[Ref]] = field(default_factory=dict)

    @property
    def role(self) -> str:
        """"step", "owner" or "evaluator" (see :func:`graphssl.component.role_of`)."""
        return role_of(self.cls)

    @property
    def is_step(self) -> bool:
        return self.role == "step"

    @property
    def type_name(self) -> str:
        return self.cls.type_name


@dataclass
class GraphSpec:
    nodes: dict[str, NodeSpec]
    graph: nx.DiGraph  # data edges between step nodes (and the batch source)
    order: list[str]  # step nodes in execution order
    build_order: list[str]  # nodes that own a module, in construction order
    objective: dict[Ref, float]
    warnings: list[Problem]
    module_edges: list[ModuleEdge] = field(default_factory=list)

    def outputs_of(self, node: str) -> dict[str, Out]:
        return SOURCE_OUTPUTS if node == SOURCE else self.nodes[node].cls.outputs
