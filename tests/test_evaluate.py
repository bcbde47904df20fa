"""Evaluation: likelihood, probes, classification metrics, completion quality, the `igpt evaluate` path."""
import json
import math
import time

import numpy as np
import pytest
import torch
from sklearn.metrics import cohen_kappa_score
from torch.utils.data import DataLoader, TensorDataset

from igptlib.cli import main
from igptlib.config import DataConfig, ModelConfig, model_config
from igptlib.data import PixelDataModule
from igptlib.datasets import load_split
from igptlib.evaluate import evaluate_model, first_and_mistakes, unaugmented_train_loader
from igptlib.judge import classify_images, completion_quality, digit_classifier, pixel_agreement, train_digit_classifier
from igptlib.metrics import (
    PROBE_STRENGTHS,
    OutOfTime,
    SplitPass,
    classification_metrics,
    fit_linear_probe,
    layer_features,
    likelihood,
    linear_probe,
    linear_probes,
    nats_per_image,
    nats_to_bits,
    predict_classes,
    probe_accuracy,
    probes_from_features,
    split_pass,
)
from igptlib.model import GPT, ar_loss, mask_tokens


def tiny(**changes) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig.from_dict({"vocab_size": 8, "n_px": 6, "n_embd": 32, "n_layer": 2, "n_head": 4, **changes}))


def token_loader(model: GPT, count: int = 7, batch_size: int = 3, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.config.vocab_size, (count, model.config.seq_len), generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    return DataLoader(TensorDataset(tokens, labels), batch_size=batch_size)


@pytest.fixture(scope="module")
def datamodule(mnist_root) -> PixelDataModule:
    """Real MNIST tokens, a few hundred images per split (the 16-colour palette under the data root)."""
    module = PixelDataModule(DataConfig(root=str(mnist_root), limit_train=400, limit_val=100, limit_test=100, batch_size=100))
    module.prepare_data()
    module.setup()
    return module


@pytest.fixture(scope="module")
def classifier(mnist_root):
    return digit_classifier(mnist_root)


# -- likelihood ------------------------------------------------------------------------------------


def test_bits_are_nats_over_ln2():
    assert nats_to_bits(math.log(2)) == pytest.approx(1.0)
    model = tiny()
    result = likelihood(model, token_loader(model))
    assert result["bits_per_pixel"] == pytest.approx(result["nats_per_pixel"] / math.log(2))


def test_uniform_model_has_likelihood_ln_vocab():
    model = tiny()
    torch.nn.init.zeros_(model.head.weight)  # equal logits for every colour: the uniform distribution
    result = likelihood(model, token_loader(model))  # batches of 3, 3 and 1: unequal sizes must weigh right
    assert result["nats_per_pixel"] == pytest.approx(math.log(8), abs=1e-6)
    assert result["bits_per_pixel"] == pytest.approx(3.0, abs=1e-6)
    assert result["pixels"] == 7 * 36


def test_likelihood_is_the_mean_ar_loss_over_all_pixels():
    model = tiny()
    loader = token_loader(model, count=5, batch_size=2)
    tokens = torch.cat([batch for batch, _ in loader])
    with torch.no_grad():
        expected = ar_loss(model(tokens), tokens).item()
    assert likelihood(model, loader)["nats_per_pixel"] == pytest.approx(expected, rel=1e-5)


def test_one_pass_for_likelihood_and_classes_equals_the_separate_passes():
    model = tiny()
    loader = token_loader(model, count=5, batch_size=2)
    result, actual, predicted = likelihood(model, loader, classes=True)
    assert result["nats_per_pixel"] == pytest.approx(likelihood(model, loader)["nats_per_pixel"], rel=1e-6)
    expected_actual, expected_predicted = predict_classes(model, loader)
    np.testing.assert_array_equal(actual, expected_actual)
    np.testing.assert_array_equal(predicted, expected_predicted)


def test_per_image_nats_average_to_the_likelihood_and_rank_a_memorised_image_first():
    model = tiny()
    loader = token_loader(model, count=5, batch_size=2)
    tokens = torch.cat([batch for batch, _ in loader])
    nats = nats_per_image(model, tokens, batch_size=2)
    assert nats.shape == (5,)
    assert nats.mean().item() == pytest.approx(likelihood(model, loader)["nats_per_pixel"], rel=1e-5)
    # A model that has learnt one image finds it the most likely of the five.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = ar_loss(model(tokens[3:4]), tokens[3:4])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert int(nats_per_image(model, tokens).argmin()) == 3


def test_likelihood_refuses_a_bert_model_and_an_empty_loader():
    with pytest.raises(ValueError, match="autoregressive"):
        likelihood(tiny(objective="bert"), token_loader(tiny()))
    model = tiny()
    with pytest.raises(ValueError, match="no images"):
        likelihood(model, DataLoader(TensorDataset(torch.zeros(0, 36, dtype=torch.long), torch.zeros(0)), batch_size=2))


# -- classification metrics ------------------------------------------------------------------------


def test_a_perfect_classifier_has_kappa_and_accuracy_one():
    labels = np.arange(10).repeat(5)
    metrics = classification_metrics(labels, labels)
    assert metrics["kappa"] == pytest.approx(1.0)
    assert metrics["accuracy"] == 1.0
    assert metrics["confusion_matrix"] == (np.eye(10, dtype=int) * 5).tolist()
    assert metrics["precision"] == metrics["recall"] == metrics["f1"] == [1.0] * 10
    json.dumps(metrics)  # plain numbers only: it goes into evaluation.json


def test_kappa_agrees_with_sklearn_on_a_random_case():
    rng = np.random.default_rng(0)
    actual = rng.integers(0, 10, 500)
    predicted = np.where(rng.random(500) < 0.7, actual, rng.integers(0, 10, 500))  # 70% right, the rest random
    metrics = classification_metrics(actual, predicted)
    assert metrics["kappa"] == pytest.approx(cohen_kappa_score(actual, predicted))
    assert 0.5 < metrics["kappa"] < metrics["accuracy"] < 0.9  # kappa discounts agreement by chance
    assert np.asarray(metrics["confusion_matrix"]).sum() == 500


def test_confusion_matrix_and_per_class_scores_on_a_hand_made_case():
    actual = [0, 0, 1, 1, 2]
    predicted = [0, 1, 1, 1, 0]
    metrics = classification_metrics(actual, predicted, num_classes=3)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]  # rows actual, columns predicted
    assert metrics["precision"] == pytest.approx([0.5, 2 / 3, 0.0])
    assert metrics["recall"] == pytest.approx([0.5, 1.0, 0.0])
    assert metrics["support"] == [2, 2, 1]
    assert metrics["accuracy"] == pytest.approx(0.6)


def test_classification_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="equally long"):
        classification_metrics([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="no labels"):
        classification_metrics([], [])
    with pytest.raises(ValueError, match=r"predicted labels must lie in 0\.\.9"):
        classification_metrics([0, 1], [0, 10])


# -- linear probes ---------------------------------------------------------------------------------


def test_one_pass_features_equal_the_models_own():
    model = tiny()
    loader = token_loader(model)
    features, labels = layer_features(model, loader)
    tokens = torch.cat([batch for batch, _ in loader])
    assert sorted(features) == [0, 1, 2] and len(labels) == 7
    for layer, values in features.items():
        torch.testing.assert_close(torch.from_numpy(values), model.features(tokens, layer), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"layer must lie in 0\.\.2"):
        layer_features(model, loader, layers=[3])


def test_linear_probe_rejects_mismatched_lengths():
    features = np.zeros((4, 3))
    with pytest.raises(ValueError, match="train: 4 feature rows but 3 labels"):
        linear_probe(features, [0, 1, 0], features, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="single class"):
        linear_probe(features, [1, 1, 1, 1], features, [0, 1, 0, 1])


def test_each_layer_keeps_the_probe_strength_that_does_best_on_validation():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 200))

    def split(n):
        labels = rng.integers(0, 3, n)
        noisy = 0.15 * centres[labels] + rng.normal(size=(n, 200))  # a weak signal in many dimensions
        clean = np.eye(3)[labels] * 3 + 0.5 * rng.normal(size=(n, 3))  # a strong one in few
        return SplitPass(labels=labels, features={0: noisy, 1: clean})

    train, val, test = split(60), split(400), split(400)
    probes = probes_from_features(train, val, test)
    assert probes["inverse_l2_tried"] == list(PROBE_STRENGTHS)
    fitted, on_val = {}, {}
    for layer in (0, 1):
        fitted[layer] = {c: fit_linear_probe(train.features[layer], train.labels, inverse_l2=c) for c in PROBE_STRENGTHS}
        on_val[layer] = {c: probe_accuracy(probe, val.features[layer], val.labels) for c, probe in fitted[layer].items()}
        chosen = max(PROBE_STRENGTHS, key=on_val[layer].get)  # the first of equals: the most regularised
        assert probes["inverse_l2"][layer] == chosen and probes["val_accuracy"][layer] == on_val[layer][chosen]
        assert probes["test_accuracy"][layer] == probe_accuracy(fitted[layer][chosen], test.features[layer], test.labels)
    # Layer 1 separates at every strength: the tie goes to the most regularised.
    assert len(set(on_val[1].values())) == 1 and probes["inverse_l2"][1] == PROBE_STRENGTHS[0]
    assert len(set(on_val[0].values())) > 1, "layer 0's strength matters"
    # One strength alone is the plain probe at that strength.
    plain = probes_from_features(train, val, test, strengths=(1.0,))
    assert plain["test_accuracy"][0] == probe_accuracy(fitted[0][1.0], test.features[0], test.labels)
    with pytest.raises(ValueError, match="at least one inverse L2 strength"):
        probes_from_features(train, val, test, strengths=())


def test_linear_probes_on_an_untrained_xs_model_beat_chance(datamodule):
    torch.manual_seed(0)
    model = GPT(model_config("xs", vocab_size=16, n_px=28))
    probes = linear_probes(model, unaugmented_train_loader(datamodule), datamodule.val_dataloader(),
                           datamodule.test_dataloader(), layers=[0, 2, 4])
    assert sorted(probes["test_accuracy"]) == [0, 2, 4]
    assert probes["train_examples"] == 400
    assert probes["best_layer"] == max(probes["val_accuracy"], key=probes["val_accuracy"].get)
    # Even random features of pooled embeddings carry where the ink is: well above 10% chance.
    assert probes["best_test_accuracy"] > 0.25


# -- the digit classifier and completion quality ---------------------------------------------------


def test_digit_classifier_is_accurate_on_real_mnist_and_cached(mnist_root, classifier):
    model, info = classifier
    assert (mnist_root / "classifiers" / "mnist-cnn-seed0-epochs1.safetensors").exists()
    images, labels = load_split("mnist", mnist_root, train=False)
    accuracy = (classify_images(model, images) == labels).float().mean().item()
    assert accuracy > 0.95
    assert accuracy == pytest.approx(info["test_accuracy"], abs=1e-6)  # the cache holds what it says
    again, _ = digit_classifier(mnist_root)
    torch.testing.assert_close(classify_images(again, images[:500]), classify_images(model, images[:500]))


def test_digit_classifier_training_is_seeded(mnist_root):
    images, labels = load_split("mnist", mnist_root, train=True)
    first = train_digit_classifier(images[:256], labels[:256], seed=3)
    second = train_digit_classifier(images[:256], labels[:256], seed=3)
    for a, b in zip(first.parameters(), second.parameters()):
        torch.testing.assert_close(a, b)
    # Under a caller's bfloat16 autocast (igpt evaluate --precision bf16) it still trains in float32.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        third = train_digit_classifier(images[:256], labels[:256], seed=3)
    for a, b in zip(first.parameters(), third.parameters()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="256 images but 10 labels"):
        train_digit_classifier(images[:256], labels[:10])


def test_pixel_agreement_on_hand_made_completions():
    originals = torch.arange(12).view(2, 6) % 4
    identical = originals[:, None].repeat(1, 3, 1)
    assert pixel_agreement(originals, identical, keep=2) == 1.0
    changed = identical.clone()
    changed[:, :, -1] = (changed[:, :, -1] + 1) % 4  # the last of 4 completed tokens wrong everywhere
    assert pixel_agreement(originals, changed, keep=2) == pytest.approx(0.75)


def test_completion_checks_say_what_is_wrong():
    originals = torch.zeros(2, 6, dtype=torch.long)
    with pytest.raises(ValueError, match="do not match originals"):
        pixel_agreement(originals, torch.zeros(3, 1, 6, dtype=torch.long), keep=2)
    with pytest.raises(ValueError, match="something must be completed"):
        pixel_agreement(originals, torch.zeros(2, 1, 6, dtype=torch.long), keep=6)
    wrong_prefix = torch.zeros(2, 1, 6, dtype=torch.long)
    wrong_prefix[0, 0, 0] = 1
    with pytest.raises(ValueError, match="first 2 tokens differ"):
        pixel_agreement(originals, wrong_prefix, keep=2)


def test_completion_quality_on_real_digits(datamodule, classifier):
    model, _ = classifier
    tokens, labels = (tensor[:50] for tensor in datamodule.test_set.tensors)
    keep = 14 * 28
    identical = tokens[:, None].repeat(1, 2, 1)
    quality = completion_quality(tokens, identical, labels, keep, datamodule.palette, model)
    assert quality["pixel_agreement"] == 1.0
    assert quality["class_agreement"] == quality["original_accuracy"] >= 0.9
    assert quality["agreeing_completions"] == round(quality["class_agreement"] * 100)
    # Blank bottom halves (the background colour everywhere) lose pixels and, for most digits, the class.
    background = int(np.argmin(datamodule.palette[:, 0]))
    blank = identical.clone()
    blank[:, :, keep:] = background
    quality = completion_quality(tokens, blank, labels, keep, datamodule.palette, model)
    assert quality["pixel_agreement"] < 1.0
    assert quality["class_agreement"] < quality["original_accuracy"] - 0.2
    with pytest.raises(ValueError, match="one label per original"):
        completion_quality(tokens, identical, labels[:10], keep, datamodule.palette, model)


# -- everything at once, and the command -----------------------------------------------------------


def test_evaluate_model_writes_every_metric_and_figure(datamodule, classifier, tmp_path):
    torch.manual_seed(0)
    model = GPT(model_config("xs", vocab_size=16, n_px=28))
    results = evaluate_model(model, datamodule, probe_layers=[0, 4], probe_train=100, completions=3, samples=2,
                             figures=tmp_path, progress=False)
    assert set(results) >= {"likelihood", "probes", "classification", "completion"}
    assert results["likelihood"]["nats_per_pixel"] > 0
    assert results["completion"]["images"] == 3 and results["completion"]["samples"] == 2
    assert results["probes"]["train_examples"] == 100
    json.loads(json.dumps(results))
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["actual_vs_predicted.png", "completions.png", "confusion_matrix.png", "linear_probes.png", "predictions.png"]


def test_the_predictions_figure_shows_the_first_images_then_later_mistakes():
    actual = np.array([1, 2, 3, 4, 5, 6])
    predicted = np.array([1, 0, 3, 0, 0, 0])
    np.testing.assert_array_equal(first_and_mistakes(actual, predicted, first=2, mistakes=2), [0, 1, 3, 4])
    np.testing.assert_array_equal(first_and_mistakes(actual, actual, first=10), np.arange(6))


def test_evaluate_model_in_bfloat16_agrees_with_float32(datamodule):
    torch.manual_seed(0)
    model = GPT(model_config("xs", vocab_size=16, n_px=28))
    options = dict(probes=False, completions=0, progress=False)
    full = evaluate_model(model, datamodule, **options)
    half = evaluate_model(model, datamodule, precision="bf16", **options)
    assert (full["precision"], half["precision"]) == ("32", "bf16")
    assert half["likelihood"]["nats_per_pixel"] == pytest.approx(full["likelihood"]["nats_per_pixel"], rel=0.01)
    assert half["likelihood"]["nats_per_pixel"] != full["likelihood"]["nats_per_pixel"]  # autocast was on
    with pytest.raises(ValueError, match=r"precision must be one of \['32', 'bf16'\], got '16'"):
        evaluate_model(model, datamodule, precision="16", **options)


def test_evaluate_model_skips_what_a_bert_model_cannot_do(datamodule):
    torch.manual_seed(0)
    model = GPT(model_config("xs", vocab_size=16, n_px=28, objective="bert"))
    results = evaluate_model(model, datamodule, probes=False, progress=False)
    assert results["objective"] == "bert"
    assert "classification" in results and "likelihood" not in results and "completion" not in results


# -- a BERT model's masked reading -----------------------------------------------------------------


def test_a_masked_reading_averages_readings_of_seeded_masks_at_the_pretraining_rate():
    model = tiny(objective="bert", mask_prob=0.3).eval()
    loader = token_loader(model)  # batches of 3, 3 and 1
    averaged = split_pass(model, loader, classes=True, layers=[0, 2], masks=3, mask_seed=5)

    # The same masks drawn by hand: mask_prob 0.3 and the mask token, reading j from seed 5 + j.
    generators = [torch.Generator().manual_seed(5 + j) for j in range(3)]
    probabilities, features = [], []
    with torch.no_grad():
        for tokens, _ in loader:
            masked = [mask_tokens(tokens, 0.3, model.config.mask_token, generator)[0] for generator in generators]
            probabilities.append(torch.stack([model.classify(m).softmax(dim=-1) for m in masked]).mean(dim=0))
            features.append(torch.stack([model.features(m, 2) for m in masked]).mean(dim=0))
    # Features averaged before the probe, probabilities averaged before the argmax.
    np.testing.assert_allclose(averaged.features[2], torch.cat(features).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(averaged.predicted, torch.cat(probabilities).argmax(dim=-1).numpy())

    # Averaging over masks is the mean of the single-mask readings, and a seed gives the same masks again.
    singles = [split_pass(model, loader, layers=[0, 2], masks=1, mask_seed=5 + j) for j in range(3)]
    for layer in (0, 2):
        np.testing.assert_allclose(averaged.features[layer], np.mean([one.features[layer] for one in singles], axis=0),
                                   rtol=1e-5, atol=1e-6)
    again = split_pass(model, loader, layers=[2], masks=3, mask_seed=5)
    np.testing.assert_array_equal(again.features[2], averaged.features[2])
    for other in (split_pass(model, loader, layers=[2], masks=3, mask_seed=6), split_pass(model, loader, layers=[2])):
        assert not np.allclose(other.features[2], averaged.features[2])  # other masks, or none


def test_masked_readings_are_refused_for_an_ar_model_and_bad_counts():
    bert = tiny(objective="bert")
    with pytest.raises(ValueError, match="masked readings are for a model with objective 'bert'; this one is 'ar'"):
        split_pass(tiny(), token_loader(bert), masks=2)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="masks must be a whole number of masked readings"):
            split_pass(bert, token_loader(bert), masks=bad)


def test_an_ar_evaluation_reads_whole_images_only(datamodule):
    torch.manual_seed(0)
    model = GPT(model_config("xs", vocab_size=16, n_px=28))
    results = evaluate_model(model, datamodule, probes=False, completions=0, masks=4, progress=False)
    assert "masked" not in results and list(results["pass_seconds"]) == ["test"]
    with pytest.raises(ValueError, match="masks must be a whole number of masked readings, 0 or more, got -1"):
        evaluate_model(model, datamodule, probes=False, completions=0, masks=-1, progress=False)


def test_evaluate_model_refuses_data_of_another_shape(datamodule):
    with pytest.raises(ValueError, match="14x14 images over 16 colours"):
        evaluate_model(GPT(model_config("xs", vocab_size=16, n_px=14)), datamodule, progress=False)
    with pytest.raises(ValueError, match=r"keep_rows must lie in 0\.\.27"):
        evaluate_model(GPT(model_config("xs", vocab_size=16, n_px=28)), datamodule, keep_rows=28, progress=False)


def test_an_evaluation_stopped_by_its_deadline_goes_on_from_the_passes_it_kept(datamodule, tmp_path):
    torch.manual_seed(0)
    model = GPT(model_config("xs", vocab_size=16, n_px=28))
    options = dict(probe_layers=[0, 4], probe_train=100, completions=0, progress=False)

    def measures(results: dict) -> dict:
        return {key: value for key, value in results.items() if key not in ("seconds", "pass_seconds")}

    whole = measures(evaluate_model(model, datamodule, **options))
    passes = tmp_path / "evaluation.passes"
    first = evaluate_model(model, datamodule, passes=passes, **options)
    assert measures(first) == whole
    assert sorted(path.name for path in passes.iterdir()) == ["test.npz", "train.npz", "validation.npz"]
    # Served again, the passes bring the time they took: the evaluation's seconds count them.
    served = evaluate_model(model, datamodule, passes=passes, **options)
    assert served["pass_seconds"] == first["pass_seconds"] and set(first["pass_seconds"]) == {"test", "train", "validation"}
    assert served["seconds"] >= sum(first["pass_seconds"].values()) > 0

    # As if stopped after the test split: that pass is served again, the next one meets the deadline.
    (passes / "train.npz").unlink()
    (passes / "validation.npz").unlink()
    with pytest.raises(OutOfTime, match="train split: stopped after 0 of 1 batches"):
        evaluate_model(model, datamodule, passes=passes, deadline=time.perf_counter(), **options)
    assert measures(evaluate_model(model, datamodule, passes=passes, **options)) == whole

    # Passes kept for other weights, or another precision, are measured again, not served.
    with pytest.raises(OutOfTime, match="test split: stopped after 0 of 1 batches"):
        evaluate_model(model, datamodule, passes=passes, deadline=time.perf_counter(), **{**options, "precision": "bf16"})
    torch.manual_seed(1)
    other = GPT(model_config("xs", vocab_size=16, n_px=28))
    with pytest.raises(OutOfTime, match="test split: stopped after 0 of 1 batches"):
        evaluate_model(other, datamodule, passes=passes, deadline=time.perf_counter(), **options)


def test_igpt_evaluate_with_a_budget_stops_and_the_same_command_goes_on(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "evaluation.json"
    command = ["evaluate", "--model", str(tiny_checkpoint), "--out", str(out), "--probe-layers", "0", "1",
               "--probe-train", "32", "--completions", "0", "--no-figures"]
    assert main([*command, "--budget-minutes", "0"]) == 0
    said = capsys.readouterr().out
    assert "test split: stopped after 0 of 2 batches as the budget ran out" in said and "the same command goes on" in said
    assert not out.exists()
    assert main(command) == 0
    assert json.loads(out.read_text())["probes"]["train_examples"] == 32
    assert not (tmp_path / "evaluation.passes").exists()  # kept only until the evaluation is written


def test_a_bert_checkpoint_is_evaluated_unmasked_and_masked_side_by_side(mnist_root, tmp_path, capsys):
    from igptlib.config import run_config
    from igptlib.evaluate import evaluate_checkpoint, summary
    from igptlib.train import train

    config = run_config("xs", objective="bert", root=str(mnist_root), limit_train=64, limit_val=32, limit_test=32,
                        batch_size=16)
    config = config.replace(train={**config.train.to_dict(), "steps": 2, "val_every": 2, "save_every": 2,
                                   "checkpoint_steps": [], "test": False, "progress_bar": False, "precision": "32-true",
                                   "log_every": 1})
    run = tmp_path / "run"
    train(config, run)
    checkpoint = run / "checkpoints" / "last.ckpt"
    results = evaluate_checkpoint(checkpoint, probe_layers=[0, 4], probe_train=64, classification=True, masks=2,
                                  progress=False)
    saved = json.loads((run / "evaluation.json").read_text())
    assert saved["objective"] == "bert" and "likelihood" not in saved
    masked = saved["masked"]
    assert (masked["masks"], masked["mask_prob"], masked["mask_seed"]) == (2, 0.15, 0)
    for reading in (saved, masked):  # the unmasked reading and the masked one, side by side
        assert set(reading["probes"]["test_accuracy"]) == {"0", "4"} and reading["probes"]["train_examples"] == 64
        assert sum(map(sum, reading["classification"]["confusion_matrix"])) == 32
    assert set(saved["pass_seconds"]) == {"test", "train", "validation", "test-masked", "train-masked",
                                          "validation-masked"}
    assert "masked inputs (mask rate 0.15, averaged over 2 masks)" in summary(results)
    # igpt evaluate --masks 0: the unmasked reading alone
    assert main(["evaluate", "--model", str(checkpoint), "--no-probes", "--classification", "--masks", "0",
                 "--no-figures", "--out", str(run / "unmasked.json")]) == 0
    unmasked = json.loads((run / "unmasked.json").read_text())
    assert "masked" not in unmasked and unmasked["classification"] == saved["classification"]


def test_igpt_evaluate_writes_json_into_the_run_folder(mnist_root, tmp_path, classifier):
    from igptlib.config import run_config
    from igptlib.train import train

    config = run_config("xs", root=str(mnist_root), limit_train=64, limit_val=32, limit_test=32, batch_size=16)
    config = config.replace(train={**config.train.to_dict(), "steps": 2, "val_every": 2, "save_every": 2,
                                   "checkpoint_steps": [], "test": False, "progress_bar": False, "precision": "32-true",
                                   "log_every": 1})
    run = tmp_path / "run"
    train(config, run)
    assert main(["evaluate", "--model", str(run / "checkpoints" / "last.ckpt"), "--probe-layers", "0", "4",
                 "--probe-train", "64", "--completions", "2", "--samples", "2"]) == 0
    saved = json.loads((run / "evaluation.json").read_text())
    assert saved["global_step"] == 2 and saved["finetuned"] is False
    assert "classification" not in saved  # a generative checkpoint's head is untrained: left out by default
    assert saved["test_images"] == 32 and set(saved["probes"]["test_accuracy"]) == {"0", "4"}
    assert (run / "figures" / "completions.png").exists()
    # bfloat16 autocast: the same measures, written to another file, nearly the same likelihood
    assert main(["evaluate", "--model", str(run / "checkpoints" / "last.ckpt"), "--no-probes", "--completions", "0",
                 "--precision", "bf16", "--out", str(run / "bf16.json"), "--no-figures"]) == 0
    fast = json.loads((run / "bf16.json").read_text())
    assert fast["precision"] == "bf16" and saved["precision"] == "32"
    assert fast["likelihood"]["nats_per_pixel"] == pytest.approx(saved["likelihood"]["nats_per_pixel"], abs=0.01)
