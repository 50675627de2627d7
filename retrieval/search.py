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
    """What one lookup found: the nearest curated FAQ entries (best first, for the answer
    decision) and the passages to attach."""

    faqs: list[Hit]
    passages: list[Hit]


FAQ_CANDIDATES = 2  # the best curated question and its runner-up (the margin between them)


async def retrieve(
    store: KnowledgeStore,
    vector: Sequence[float],
    where: Condition,
    *,
    top_k: int,
    context_threshold: float,
    direct_answers: bool = True,
) -> Retrieved:
    """The hits at or above ``context_threshold`` (passages), and, when ``direct_answers``, the
    two nearest curated FAQ entries with an answer under the same ACL, whatever their score
    (a second search, restricted to ``kind: faq`` inside the engine)."""
    hits = await store.search(vector, where, top_k, context_threshold)
    faqs: list[Hit] = []
    if direct_answers:
        only_faqs = All((where, Match("kind", ("faq",))))
        found = await store.search(vector, only_faqs, FAQ_CANDIDATES, -1.0)
        faqs = [h for h in found if h.payload.get("answer")]
    return Retrieved(faqs, hits)
