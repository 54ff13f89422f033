"""The per-package coverage floor check of `make test` (oshu_testkit.coverage_floor)."""

from __future__ import annotations

from oshu_testkit.coverage_floor import check, floors


def test_floors_cover_every_product_package() -> None:
    assert set(floors()) == {"oshu_contract", "oshu_sidecar", "oshu_operator", "oshu_gateway"}
    assert all(0 < f <= 100 for f in floors().values())


def test_under_a_floor_or_unmeasured_fails_at_or_over_passes() -> None:
    wanted = {"a": 80.0, "b": 50.0, "c": 10.0}
    failures = check({"a": 79.9, "b": 50.0}, wanted)
    assert failures == ["a: 79.9% is under its floor of 80%", "c: not measured (floor 10%)"]
    assert check({"a": 80.0, "b": 99.0, "c": 10.0}, wanted) == []
