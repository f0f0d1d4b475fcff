"""The token budget's arithmetic and the user_config checks (no Ray cluster needed)."""

import numpy as np
import pytest
from embedrt.serve.batching import Pending, batch_tokens, split_rows, weigh
from embedrt.serve.user_config import UserConfig


def test_a_request_weighs_its_tokens_capped_at_the_budget():
    assert weigh(120, 16384) == 120
    assert weigh(50_000, 16384) == 16384  # runs alone instead of being refused
    assert weigh(0, 100) == 1
    items = [Pending(["a", "b"], 10), Pending(["c"], 7)]
    assert batch_tokens(items) == 17


def test_rows_go_back_to_their_requests():
    items = [Pending(["a", "b"], 2), Pending(["c"], 1), Pending(["d", "e", "f"], 3)]
    rows = np.arange(6 * 2, dtype=np.float32).reshape(6, 2)
    blocks = split_rows(rows, items)
    assert [b.shape[0] for b in blocks] == [2, 1, 3]
    assert blocks[1].tolist() == [[4.0, 5.0]]


def test_user_config_is_checked():
    assert UserConfig.parse({"model": "m", "version": 3}).version == "3"
    with pytest.raises(ValueError, match="unknown key"):
        UserConfig.parse({"model": "m", "modle": "x"})
    with pytest.raises(ValueError, match="no model"):
        UserConfig.parse({"version": "1"})
    with pytest.raises(ValueError, match="max_batch_tokens"):
        UserConfig.parse({"model": "m", "max_batch_tokens": 0})
