"""The two storage tiers go by one pair of names everywhere: the manifest (the
chain store's router), the read models, the REST API's schema and the metrics."""

from __future__ import annotations

from typing import get_args

from checkpoint._chain import TIERS, TierRouter
from checkpoint._views import StorageView
from checkpoint.stores import MemoryStore
from worker_app import metrics
from worker_app.api.schemas import StorageTotals, Tier


def test_every_layer_names_the_tiers_alike() -> None:
    assert get_args(Tier) == TIERS == metrics.TIERS == ("sql", "object")
    assert {f"{t}_bytes" for t in TIERS} <= set(StorageTotals.model_fields)


def test_the_router_speaks_only_those_names() -> None:
    router = TierRouter(MemoryStore("sql"), MemoryStore("object"), db_size_limit=10)
    assert (router.tier_for(9), router.tier_for(10)) == TIERS
    assert [router.store_for(t) for t in TIERS] == [router.sql, router.objects]


def test_an_empty_chain_still_reports_every_tier() -> None:
    view = StorageView.of("t", 10, [], lambda ref: ref.key)
    assert view.bytes_by_tier == dict.fromkeys(TIERS, 0)
