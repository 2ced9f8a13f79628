"""Pipeline parallelism (fasttrain.parallel.pipeline) with threads standing in for ranks: the
schedules, the stage cut, and training semantics against single-process references."""
import itertools

import numpy as np
import pytest

import fasttrain as ft
from fasttrain.parallel import ThreadWorld
from fasttrain.parallel.pipeline import Pipeline, _own_params, micro_rows, partition, schedule_ops

nn = ft.nn
STEPS = 3
BATCH = 10          # uneven cut at M = 4: micro-batches of 3, 3, 2, 2 rows


def build(dropout=0.0, batchnorm=False, layer_id=0):
    layers = [nn.Conv2d(1, 4, 3, padding=1, relu=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(4, relu=True))
    layers += [nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout, seed=3, layer_id=layer_id))
    layers += [nn.Linear(6 * 16, 16), nn.ReLU(), nn.Linear(16, 5)]
    return nn.Sequential(*layers)


def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((STEPS, BATCH, 1, 8, 8)).astype(np.float32), rng.integers(0, 5, (STEPS, BATCH))


def reference(micro_batches=None, **kw):
    """Single process: whole-batch steps (micro_batches None), or gradient accumulation over the
    pipeline's micro-batches, each micro-batch's loss gradient weighted rows / N."""
    X, Y = data()
    model = build(**kw)
    arena = ft.ParamArena.for_model(model, seed=1)
    opt = ft.optim.Momentum(arena, lr=0.1)
    loss = ft.losses.SoftmaxCrossEntropy()
    for s in range(STEPS):
        model.set_step(s)
        counters = model.draw_counters()   # every micro-batch replays the step's draws
        arena.zero_grad()
        for start, rows in micro_rows(BATCH, micro_batches or 1):
            model.set_draw_counters(counters)
            for _, m in model.named_modules():
                if isinstance(m, nn.Dropout):
                    m.rows = (start, BATCH) if micro_batches else None
            _, d = loss(model.forward(X[s, start:start + rows]), Y[s, start:start + rows])
            if rows != BATCH:
                d *= np.float32(rows / BATCH)
            model.backward(d)
        opt.step()
    return state(model, arena.params)


def state(model, params):
    out = {p.name: p.data.copy() for p in params}
    for path, m in model.named_modules():
        for k, v in (getattr(m, "buffers", None) or {}).items():
            out[f"{path}.{k}"] = v.copy()
    return out


def pipelined(S, M, schedule, **kw):
    X, Y = data()

    def rank(comm):
        model = build(**kw)
        pipe = Pipeline(model, comm, M, schedule, input_shape=(1, 8, 8), seed=1)
        opt = ft.optim.Momentum(pipe.arena, lr=0.1)
        loss = ft.losses.SoftmaxCrossEntropy()
        for s in range(STEPS):
            pipe.arena.zero_grad()
            pipe.train_step(X[s] if pipe.first else None, Y[s] if pipe.last else None, loss, step=s, n=BATCH)
            opt.step()
        own = {p.name for p in pipe.params} | set(pipe.buffers)
        return {k: v for k, v in state(model, pipe.params).items() if k in own}, pipe

    results = ThreadWorld(S).run(rank)
    merged = {}
    for values, _ in results:
        merged.update(values)
    return merged, [pipe for _, pipe in results]


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k}: max difference {np.abs(a[k] - b[k]).max()}"


@pytest.mark.parametrize("S,M,schedule", list(itertools.product((2, 3), (1, 2, 4), ("gpipe", "1f1b"))))
def test_pipeline_equals_single_process(S, M, schedule):
    got, _ = pipelined(S, M, schedule)
    # bit-identical to one process accumulating over the same micro-batches (M = 1: plain steps)
    assert_same(got, reference(M))
    whole = reference(None)
    for k in whole:  # and to whole-batch steps within float32 reassociation of the gradient sums
        np.testing.assert_allclose(got[k], whole[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_batchnorm_normalizes_each_micro_batch():
    got, _ = pipelined(3, 2, "1f1b", batchnorm=True)
    assert_same(got, reference(2, batchnorm=True))   # running statistics included
    whole = reference(None, batchnorm=True)
    assert max(np.abs(got[k] - whole[k]).max() for k in whole) > 1e-4   # not the whole batch's statistics


@pytest.mark.parametrize("S,M", [(2, 4), (3, 2)])
def test_dropout_masks_independent_of_split(S, M):
    got, _ = pipelined(S, M, "1f1b", dropout=0.5)
    assert_same(got, reference(M, dropout=0.5))
    assert_same(got, pipelined(1, M, "gpipe", dropout=0.5)[0])
    whole = reference(None, dropout=0.5)     # the whole batch's masks, row for row
    for k in whole:
        np.testing.assert_allclose(got[k], whole[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("S", [2, 3])
def test_default_dropout_keys_independent_of_split(S):
    # a Dropout built without layer_id is keyed by its path in the model; a stage holds its layers
    # under those paths, and the ranks (threads here) build their models in any order
    got, pipes = pipelined(S, 2, "1f1b", dropout=0.5, layer_id=None)
    assert_same(got, reference(2, dropout=0.5, layer_id=None))
    for pipe in pipes:
        whole = {id(m): path for path, m in pipe.model.named_modules()}
        assert all(whole[id(m)] == path for path, m in pipe.module.named_modules() if path)


@pytest.mark.parametrize("S,M", [(2, 4), (3, 4), (3, 2), (4, 7)])
def test_schedules_cover_every_micro_batch_and_bound_memory(S, M):
    for schedule in ("gpipe", "1f1b"):
        for s in range(S):
            ops = schedule_ops(schedule, S, s, M)
            assert sorted(ops) == sorted([("F", m) for m in range(M)] + [("B", m) for m in range(M)])
            assert [m for op, m in ops if op == "B"] == list(range(M))  # accumulation order
            held = peak = 0
            for op, m in ops:
                held += 1 if op == "F" else -1
                peak = max(peak, held)
            assert peak == (M if schedule == "gpipe" else min(S - s, M))


def test_1f1b_holds_fewer_activations_than_gpipe():
    _, gpipe = pipelined(3, 4, "gpipe")
    _, f1b = pipelined(3, 4, "1f1b")
    assert [p.peak_in_flight for p in gpipe] == [4, 4, 4]
    assert [p.peak_in_flight for p in f1b] == [3, 2, 1]
    assert f1b[0].peak_activation_bytes < gpipe[0].peak_activation_bytes


def test_partition_is_optimal():
    rng = np.random.default_rng(5)
    for _ in range(30):
        L, S = int(rng.integers(1, 8)), int(rng.integers(1, 5))
        if S > L:
            continue
        costs, required = rng.random(L), rng.random(L) < 0.7
        if required.sum() < S:
            with pytest.raises(ValueError, match=f"pipeline_stages={S}: only {required.sum()} of"):
                partition(costs, S, required)
            continue
        counts = partition(costs, S, required)
        assert len(counts) == S and min(counts) >= 1 and sum(counts) == L
        cuts = [cut for cut in itertools.combinations(range(1, L), S - 1)
                if all(required[a:b].any() for a, b in zip((0,) + cut, cut + (L,)))]
        best = min(max(costs[a:b].sum() for a, b in zip((0,) + cut, cut + (L,))) for cut in cuts)
        got = max(costs[a:b].sum() for a, b in zip(np.cumsum([0] + counts[:-1]), np.cumsum(counts)))
        assert got == pytest.approx(best)
        assert all(required[a:b].any() for a, b in zip(np.cumsum([0] + counts[:-1]), np.cumsum(counts)))


def test_partition_avoids_starting_a_stage_with_a_batchnorm():
    # the best split among those whose stages start elsewhere; only with none left the constraint goes
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(60):
        L, S = int(rng.integers(2, 8)), int(rng.integers(2, 4))
        if S > L:
            continue
        costs, avoid = rng.random(L), rng.random(L) < 0.4
        counts = partition(costs, S, None, avoid)
        starts = np.cumsum([0] + counts[:-1])
        cuts = [cut for cut in itertools.combinations(range(1, L), S - 1) if not avoid[list(cut)].any()]
        if not cuts:
            assert counts == partition(costs, S)
            continue
        checked += 1
        assert not avoid[starts[1:]].any(), (counts, avoid)
        best = min(max(costs[a:b].sum() for a, b in zip((0,) + cut, cut + (L,))) for cut in cuts)
        assert max(costs[a:b].sum() for a, b in zip(starts, np.cumsum(counts))) == pytest.approx(best)
    assert checked > 10


def test_each_stage_holds_only_its_parameters():
    model_size = ft.ParamArena.for_model(build(), seed=1).size
    _, pipes = pipelined(3, 2, "1f1b")
    assert sum(p.arena.size for p in pipes) == model_size
    for p in pipes:
        owned = {id(q) for q in p.params}
        assert all(q.data is None for q in p.model.parameters() if id(q) not in owned)


def test_predict_equals_model_forward():
    X, _ = data()
    model = build()
    ft.ParamArena.for_model(model, seed=1)
    model.eval()
    expected = model.forward(X[0])

    def rank(comm):
        m = build()
        pipe = Pipeline(m, comm, 3, input_shape=(1, 8, 8), seed=1)
        m.eval()
        return pipe.predict(X[0] if pipe.first else None, n=BATCH)

    out = ThreadWorld(2).run(rank)
    assert out[0] is None
    # a kernel may block rows differently for another row count: equal within float32 rounding
    np.testing.assert_allclose(out[1], expected, rtol=1e-5, atol=1e-6)


def test_bound_model_values_are_copied():
    model = build()
    arena = ft.ParamArena.for_model(model, seed=9)
    values = {p.name: p.data.copy() for p in arena.params}
    pipe = Pipeline(model, ft.parallel.LocalComm(), 2, input_shape=(1, 8, 8))
    assert pipe.arena is not arena
    for p in pipe.params:
        assert np.array_equal(p.data, values[p.name])


@pytest.mark.parametrize("make,match", [
    (lambda comm: Pipeline(nn.Sequential(nn.Linear(4, 3)), comm, 1, input_shape=(4,)), r"pipeline_stages=2: .* 1 top"),
    (lambda comm: Pipeline(nn.Residual(nn.Linear(4, 4)), comm, 1, input_shape=(4,)), r"expected a fasttrain.nn.Seq"),
    (lambda comm: Pipeline(build(), comm, 0, input_shape=(1, 8, 8)), r"micro_batches: expected an integer >= 1"),
    (lambda comm: Pipeline(build(), comm, 2, "zigzag", input_shape=(1, 8, 8)), r"pipeline_schedule: expected"),
    (lambda comm: Pipeline(build(), comm, 2, balance=[7, 2]), r"balance\): expected 2 layer counts"),
    (lambda comm: Pipeline(build(), comm, 2), r"input_shape"),
    (lambda comm: Pipeline(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU()), comm, 1, input_shape=(4,)),
     r"pipeline_stages=2: only 1 of the model's 3 top-level layers have parameters"),
])
def test_bad_splits_are_one_line_errors(make, match):
    def rank(comm):
        with pytest.raises(ValueError, match=match) as info:
            make(comm)
        assert "\n" not in str(info.value)

    ThreadWorld(2).run(rank)


def test_more_micro_batches_than_examples():
    X, Y = data()

    def rank(comm):
        pipe = Pipeline(build(), comm, 4, input_shape=(1, 8, 8))
        with pytest.raises(ValueError, match=r"micro_batches=4: a batch of 3 examples"):
            pipe.train_step(X[0, :3], Y[0, :3], ft.losses.SoftmaxCrossEntropy())

    ThreadWorld(2).run(rank)


@pytest.mark.parametrize("flags,match", [
    (["--pipeline-stages", "12"], "pipeline_stages=12: the model has 9 top-level layers"),
    (["--pipeline-stages", "2", "--micro-batches", "40", "--batch-size", "32"], "micro_batches=40: a batch of 32"),
    (["--pipeline-schedule", "gpipe"], "pipeline_schedule='gpipe': a pipeline option"),
    (["--pipeline-stages", "2", "--pipeline-schedule", "zigzag"], "--pipeline-schedule: expected one of gpipe, 1f1b"),
])
def test_cli_pipeline_options_are_one_line_errors(flags, match, capsys, tmp_path):
    from fasttrain.cli import main

    assert main(["train", "--quiet", "--run-dir", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err, err
    assert not any(tmp_path.iterdir())   # nothing trained, nothing written


@pytest.mark.parametrize("loss", [ft.losses.SoftmaxCrossEntropy(weight=np.ones(5)),
                                  ft.losses.SoftmaxCrossEntropy(reduction="sum"),
                                  ft.losses.SoftmaxCrossEntropy(ignore_index=2)])
def test_losses_that_are_not_a_plain_mean_are_refused(loss):
    X, Y = data()
    pipe = Pipeline(build(), ft.parallel.LocalComm(), 2, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="not a plain mean over the rows"):
        pipe.train_step(X[0], Y[0], loss)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_layer_done_comes_once_per_layer_with_its_final_gradients(schedule):
    # DataParallel's bucket all-reduce starts from this hook: a layer's gradients must be final
    X, Y = data()

    def rank(comm):
        pipe = Pipeline(build(), comm, 4, schedule, input_shape=(1, 8, 8), seed=1)
        calls, seen = [], {}

        def done(li):
            calls.append(li)
            for p in _own_params(pipe.layers[li]):
                seen[p.name] = p.grad.copy()

        pipe.arena.zero_grad()
        pipe.train_step(X[0] if pipe.first else None, Y[0] if pipe.last else None, ft.losses.SoftmaxCrossEntropy(),
                        step=0, n=BATCH, layer_done=done)
        assert calls == list(reversed(range(len(pipe.layers))))
        assert seen and all(np.array_equal(seen[p.name], p.grad) for p in pipe.params)

    ThreadWorld(3).run(rank)
