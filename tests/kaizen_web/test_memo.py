"""kaizen_web.memo.KeyedTtl: a value per key, computed again once its time is up."""

from kaizen_web.memo import KeyedTtl


def test_each_key_is_computed_once_within_its_time_and_again_after():
    now, computed = [0.0], []
    kept = KeyedTtl(5.0, lambda key: computed.append(key) or f"{key}@{now[0]}", clock=lambda: now[0])
    assert kept.get("a") == "a@0.0" and kept.get("b") == "b@0.0"
    now[0] = 4.9
    assert kept.get("a") == "a@0.0"
    now[0] = 5.0
    assert kept.get("a") == "a@5.0" and kept.get("b") == "b@5.0"
    kept.clear()
    assert kept.get("a") == "a@5.0"
    assert computed == ["a", "b", "a", "b", "a"]
