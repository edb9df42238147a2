"""Synthetic product reviews for the ``manyheads demo`` command.

The demo fine-tunes a small pretrained encoder (MiniLM) for a minute or two on
CPU, so the data has to be small, fast to make and free of downloads, yet still
show that every head learns something. The generator therefore builds each
review from labelled pieces and derives *all* labels from the pieces actually
used, which keeps text and labels consistent while leaving deliberate sources
of difficulty:

* **sentiment** (3 classes) comes from the summed polarity of the aspect
  sentences plus an optional overall verdict that may contradict them, so
  mixed reviews land on ``neutral`` and no single keyword decides the class; a
  small per-reviewer bias blurs the class boundaries so 100% is out of reach;
* **rating** (regression) is a noisy continuous function of the same score, so
  it correlates with sentiment without being a copy of it;
* **topic** (5 classes) is given by the product noun, but about 10% of rows use
  a noun shared by two topics whose label is a coin flip, capping accuracy;
* **aspects** (multi-label) are exactly the aspects mentioned, often through
  synonyms ("shipping", "value for money") rather than the label name.

Everything is driven by a ``random.Random(seed)`` instance, never the global
RNG, so the same ``(n, seed)`` always yields the same rows.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

TOPICS: tuple[str, ...] = ("electronics", "kitchen", "books", "clothing", "toys")
SENTIMENTS: tuple[str, ...] = ("negative", "neutral", "positive")
ASPECTS: tuple[str, ...] = (
    "price",
    "quality",
    "delivery",
    "packaging",
    "customer_service",
    "durability",
)

_NOUNS: dict[str, tuple[str, ...]] = {
    "electronics": ("headphones", "charger", "laptop stand", "webcam", "bluetooth speaker",
                    "phone case", "keyboard", "monitor", "power bank", "router"),
    "kitchen": ("frying pan", "blender", "knife set", "coffee grinder", "cutting board",
                "toaster", "saucepan", "mixing bowl", "spatula set", "kettle"),
    "books": ("novel", "paperback", "hardcover", "biography", "poetry collection",
              "travel guide", "history book", "thriller", "short story anthology"),
    "clothing": ("jacket", "sweater", "pair of jeans", "t-shirt", "raincoat", "scarf",
                 "pair of sneakers", "hoodie", "dress", "pair of socks"),
    "toys": ("puzzle", "building blocks set", "toy car", "plush bear", "doll",
             "kite", "board game", "yo-yo", "marble run", "toy train"),
}

# Nouns that plausibly belong to two topics; the label is drawn at random between
# them, so the text alone cannot always decide the topic (irreducible error).
_AMBIGUOUS: tuple[tuple[str, tuple[str, str]], ...] = (
    ("cookbook", ("books", "kitchen")),
    ("smart kettle", ("electronics", "kitchen")),
    ("costume", ("clothing", "toys")),
    ("picture book", ("books", "toys")),
    ("e-reader", ("electronics", "books")),
    ("apron", ("kitchen", "clothing")),
    ("robot kit", ("electronics", "toys")),
)
_AMBIGUOUS_RATE = 0.10

# Aspect phrasings by polarity. Several mention the aspect only through a
# synonym, so the aspect heads must learn more than the label word itself.
_ASPECT_PHRASES: dict[str, dict[int, tuple[str, ...]]] = {
    "price": {
        1: ("The price is very reasonable.", "It is great value for money.",
            "The cost was lower than I expected.", "It felt like a bargain."),
        -1: ("It is way too expensive.", "The price is hard to justify.",
             "Poor value for money.", "The cost is far more than it is worth."),
    },
    "quality": {
        1: ("The build quality is excellent.", "It feels solid and well made.",
            "The materials are top notch.", "The craftsmanship really shows."),
        -1: ("The quality is disappointing.", "It feels cheap and flimsy.",
             "The materials seem low grade.", "It looks poorly made up close."),
    },
    "delivery": {
        1: ("Delivery was fast.", "It arrived two days early.",
            "Shipping was quick and smooth.", "The courier brought it right on time."),
        -1: ("Delivery took forever.", "It arrived a week late.",
             "Shipping was painfully slow.", "The courier lost it for several days."),
    },
    "packaging": {
        1: ("The packaging was neat and secure.", "It came well packed in a sturdy box.",
            "The box was tidy and easy to open.", "Nicely wrapped, nothing was damaged."),
        -1: ("The packaging was torn.", "It came in a crushed box.",
             "The wrapping was sloppy and half open.", "The box was damaged on arrival."),
    },
    "customer_service": {
        1: ("Customer service was very helpful.", "The seller answered my questions quickly.",
            "Support sorted out my issue in minutes.", "The staff were friendly and responsive."),
        -1: ("Customer service never replied.", "The seller ignored my emails.",
             "Support was rude and unhelpful.", "Nobody from the shop answered my complaint."),
    },
    "durability": {
        1: ("It has held up well after months of use.", "It still works like new.",
            "It seems built to last.", "After heavy use it shows no wear at all."),
        -1: ("It broke after two weeks.", "It fell apart within a month.",
             "It started wearing out almost immediately.", "It stopped working after a few uses."),
    },
}

# Overall verdicts: +1 / -1 push the score, 0 is a lukewarm verdict that adds
# nothing, so it cannot be used as a shortcut for 'neutral'.
_VERDICTS: dict[int, tuple[str, ...]] = {
    1: ("Overall I love it.", "Highly recommended.", "I would buy it again.",
        "All in all, a great purchase.", "Five stars from me."),
    0: ("Overall it is okay.", "It does the job, nothing more.", "Not sure how I feel about it.",
        "It is fine, I guess.", "Neither great nor terrible."),
    -1: ("Overall I regret buying it.", "I would not recommend it.", "Save your money.",
         "All in all, a poor purchase.", "One star from me."),
}
_VERDICT_WEIGHT = 1.5  # a verdict outweighs one aspect, but not two opposing ones
_REVIEWER_BIAS_SD = 0.2

_OPENERS: tuple[str, ...] = (
    "I bought this {noun} last month.", "Got the {noun} as a gift for my brother.",
    "I ordered a {noun} online.", "This {noun} was a birthday present.",
    "We picked up this {noun} on a whim.", "My {noun} came yesterday.",
    "Review of the {noun}.", "I have been using this {noun} for a while.",
)
# Fillers carry no label signal; they only vary length and position of content.
_FILLERS: tuple[str, ...] = (
    "I compared a few options before choosing.", "My partner had a look at it too.",
    "I read a lot of reviews beforehand.", "This is my second order from this shop.",
    "I do not usually write reviews.", "It was on my wish list for ages.",
    "A friend suggested it to me.", "I might update this later.",
)
# Only a minimum is enforced: the longest possible combination (opener, three
# aspects, verdict, filler) stays well below the 60-word cap.
_MIN_WORDS = 15


def _lower_first(sentence: str) -> str:
    """Lower-cases the first letter so a sentence can follow a conjunction."""
    return sentence[0].lower() + sentence[1:]


def _join_contrast(rng: random.Random, first: str, second: str) -> str:
    """Fuses two opposite-polarity sentences with a hedge ("but", "although")."""
    if rng.random() < 0.5:
        return f"{first[:-1]}, but {_lower_first(second)}"
    return f"Although {_lower_first(first[:-1])}, {_lower_first(second)}"


def _sentiment(score: float) -> str:
    """Maps the (biased) content score to a class; near-zero (mixed) reviews are neutral."""
    if score <= -0.75:
        return "negative"
    if score >= 0.75:
        return "positive"
    return "neutral"


def _make_review(rng: random.Random) -> dict:
    """Builds one review and derives every label from the pieces that were used."""
    if rng.random() < _AMBIGUOUS_RATE:
        noun, pair = rng.choice(_AMBIGUOUS)
        topic = rng.choice(pair)
    else:
        topic = rng.choice(TOPICS)
        noun = rng.choice(_NOUNS[topic])

    # A latent mood biases polarities so the three classes come out balanced; the
    # label itself is recomputed from the content below, never copied from mood.
    mood = rng.choices((-1, 0, 1), weights=(0.3, 0.4, 0.3))[0]
    n_aspects = rng.choices((0, 1, 2, 3), weights=(0.06, 0.34, 0.38, 0.22))[0]
    mentioned = rng.sample(ASPECTS, n_aspects)
    polarity = {}
    sign = rng.choice((-1, 1))
    for aspect in mentioned:
        if mood == 0:  # mixed review: alternate good and bad points
            polarity[aspect], sign = sign, -sign
        else:
            polarity[aspect] = mood if rng.random() < 0.8 else -mood

    verdict = None
    if n_aspects == 0 or rng.random() < 0.65:
        if mood != 0:
            verdict = rng.choices((mood, 0, -mood), weights=(0.6, 0.2, 0.2))[0]
        else:
            # A mixed review often ends with a verdict that offsets the leaning
            # of its aspects, i.e. one that contradicts an aspect.
            lean = sum(polarity.values())
            verdict = -lean if lean and rng.random() < 0.6 else rng.choice((-1, 0, 0, 0, 1))

    # Scores are multiples of 0.5; a small per-reviewer bias moves borderline
    # reviews (|score| of 0.5 or 1) across a class boundary about 10% of the time,
    # so sentiment is not a perfectly deterministic function of the text.
    score = sum(polarity.values()) + _VERDICT_WEIGHT * (verdict or 0)
    score += rng.gauss(0.0, _REVIEWER_BIAS_SD)

    aspect_sentences = [rng.choice(_ASPECT_PHRASES[a][polarity[a]]) for a in mentioned]
    # Occasionally fuse the first opposing pair with a hedge, as real reviews do.
    pols = [polarity[a] for a in mentioned]
    if len(pols) >= 2 and pols[0] != pols[1] and rng.random() < 0.5:
        aspect_sentences[:2] = [_join_contrast(rng, *aspect_sentences[:2])]

    body = list(aspect_sentences)
    if verdict is not None:
        body.append(rng.choice(_VERDICTS[verdict]))
    fillers = rng.sample(_FILLERS, len(_FILLERS))
    if rng.random() < 0.4:
        body.append(fillers.pop())
    rng.shuffle(body)
    sentences = [rng.choice(_OPENERS).format(noun=noun), *body]
    # Pad short reviews with neutral fillers so every text reaches the minimum length.
    while len(" ".join(sentences).split()) < _MIN_WORDS:
        sentences.insert(rng.randint(1, len(sentences)), fillers.pop())
    text = " ".join(sentences)

    # The rating follows the score but with noise, so it is not a relabelled sentiment.
    rating = 3.0 + 0.8 * score + rng.gauss(0.0, 0.45)
    return {
        "text": text,
        "sentiment": _sentiment(score),
        "topic": topic,
        "aspects": [a for a in ASPECTS if a in polarity],
        "rating": round(min(5.0, max(1.0, rating)), 1),
    }


def _stream(seed: int | str) -> Iterator[dict]:
    """Yields an endless, deterministic stream of reviews for one seed."""
    rng = random.Random(seed)
    while True:
        yield _make_review(rng)


def generate_reviews(n: int, seed: int = 0) -> list[dict]:
    """Generates synthetic, labelled product reviews.

    Args:
        n (`int`):
            Number of reviews to generate.
        seed (`int`, *optional*, defaults to 0):
            Seed of the private random generator; the same `(n, seed)` always
            gives identical output.

    Returns:
        `list[dict]`: One dict per review with keys `"text"` (`str`, 15-60 words),
        `"sentiment"` (one of `SENTIMENTS`), `"topic"` (one of `TOPICS`),
        `"aspects"` (`list[str]`, a possibly empty subset of `ASPECTS` in
        `ASPECTS` order) and `"rating"` (`float` in [1.0, 5.0], one decimal).
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    stream = _stream(seed)
    return [next(stream) for _ in range(n)]


def write_demo_files(
    folder: str | os.PathLike, n_train: int = 2000, n_eval: int = 400, seed: int = 0
) -> dict[str, str]:
    """Writes a train/eval pair of JSON Lines files for the demo.

    The eval split is drawn from a separate seed stream and any review whose
    text also occurs in the train split is skipped, so no row is shared.

    Args:
        folder (`str` or `os.PathLike`):
            Output folder; created (with parents) if missing.
        n_train (`int`, *optional*, defaults to 2000):
            Number of training rows.
        n_eval (`int`, *optional*, defaults to 400):
            Number of evaluation rows.
        seed (`int`, *optional*, defaults to 0):
            Base seed; the eval stream is derived from it.

    Returns:
        `dict[str, str]`: `{"train": path, "eval": path}` of the written files.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    train = generate_reviews(n_train, seed)
    seen = {row["text"] for row in train}
    # A string seed gives an independent stream (hashed with SHA-512, so it does
    # not depend on PYTHONHASHSEED); dedup makes train/eval disjoint by construction.
    eval_rows: list[dict] = []
    for row in _stream(f"manyheads-eval-{seed}"):
        if len(eval_rows) >= n_eval:
            break
        if row["text"] not in seen:
            seen.add(row["text"])
            eval_rows.append(row)
    paths = {"train": out / "train.jsonl", "eval": out / "eval.jsonl"}
    for name, rows in (("train", train), ("eval", eval_rows)):
        with open(paths[name], "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {name: str(path) for name, path in paths.items()}
