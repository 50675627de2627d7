"""Search with the caller's access rights: the ACL rule, written once, run inside Qdrant.

The rule (``access_filter``), for a request by team T whose data may go to regions A:

- **teams**: a chunk is visible when its ``teams`` contain T or ``"*"``. Nothing else widens it.
- **kbs**: when the policy names kbs for T and the route, the chunk's ``kb`` is one of them.
- **residency**: a chunk without residency tags is usable by everyone. A chunk tagged with
  regions R is used only when A is known and every region of A is in R (containment, not
  intersection). Retrieved text is attached to a prompt that the router may send to any region
  of A, so a single region of A outside R could carry EU-only text to a US provider. A request
  that may go anywhere (a team without ``regions`` and no ``x-gateway-regions``) therefore never
  receives residency-tagged chunks, and one with no allowed region receives only untagged ones.
  The same rule applies to curated answers, which keeps one rule to audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .store import All, AnyOf, Condition, Empty, Hit, KnowledgeStore, Match


@dataclass(frozen=True, slots=True)
class Access:
    """Who is asking: the team, the regions its request may be sent to, the kbs it may read."""

    team: str
    regions: frozenset[str] | None  # None: any region
    kbs: tuple[str, ...] = ("*",)  # ("*",): every kb


def access_filter(access: Access) -> Condition:
    """The ACL as an engine-neutral filter (see the module docstring for the rule)."""
    conditions: list[Condition] = [Match("teams", (access.team, "*"))]
    if "*" not in access.kbs:
        conditions.append(Match("kb", tuple(sorted(access.kbs))))
    if not access.regions:  # any region (None), or none at all
        conditions.append(Empty("residency"))
    else:
        every_region = All(tuple(Match("residency", (r,)) for r in sorted(access.regions)))
        conditions.append(AnyOf((Empty("residency"), every_region)))
    return All(tuple(conditions))


@dataclass(frozen=True, slots=True)
class Retrieved:
    """What one lookup found: a curated answer to return as is, and passages to attach."""

    answer: Hit | None
    passages: list[Hit]


async def retrieve(
    store: KnowledgeStore,
    vector: Sequence[float],
    where: Condition,
    *,
    top_k: int,
    answer_threshold: float,
    context_threshold: float,
    direct_answers: bool = True,
) -> Retrieved:
    """One filtered search; the best FAQ entry at or above ``answer_threshold`` is the answer
    (when ``direct_answers``), the hits at or above ``context_threshold`` are the passages."""
    floor = min(answer_threshold, context_threshold) if direct_answers else context_threshold
    hits = await store.search(vector, where, top_k, floor)
    answer = None
    if direct_answers:
        answer = next(
            (
                h
                for h in hits
                if h.payload.get("kind") == "faq"
                and h.score >= answer_threshold
                and h.payload.get("answer")
            ),
            None,
        )
    passages = [h for h in hits if h.score >= context_threshold]
    return Retrieved(answer, passages)
