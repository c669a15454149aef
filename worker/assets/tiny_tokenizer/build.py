"""Regenerate the tiny model's BPE tokenizer files (vocab.json, merges.txt) from the corpus below.

The files ship with the package, so building `tiny` never needs the network. They have the layout of
OpenAI's CLIP tokenizer (256 byte symbols, the same with the end-of-word marker `</w>`, one token per
merge, then the two special tokens), only with a few hundred merges learnt from a small English corpus
instead of 48,894: enough for ordinary prompts to tokenize into whole words most of the time.

Usage: `python worker/assets/tiny_tokenizer/build.py` rewrites the files; `--check` exits 1 when the
shipped files differ from what this script produces.
"""

from __future__ import annotations

import collections
import itertools
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NUM_MERGES = 500
END = "</w>"
SPECIALS = ("<|startoftext|>", "<|endoftext|>")

CORPUS = """
a photo of a cat sitting on a wooden table next to a window, soft light, highly detailed, sharp focus
portrait of a woman with long red hair, freckles, green eyes, studio lighting, 85mm lens, bokeh
a beautiful landscape with mountains, a lake and a forest at sunset, golden hour, dramatic clouds
cinematic still of an old man walking in the rain at night, neon lights, city street, reflections
an oil painting of a ship in a storm, waves, the sea, masterpiece, by a famous artist, trending
a cute dog playing in the snow, winter, morning, cold, blue sky, professional photography
a futuristic city with flying cars and tall buildings, science fiction, concept art, digital art
a bowl of fresh fruit, apples, oranges, bananas and grapes on a kitchen counter, still life
a young man wearing a black leather jacket, standing in front of a brick wall, street style
a castle on a hill surrounded by fields of flowers, fantasy, magical, vibrant colors, spring
close up of a bird on a branch, feathers, nature, wildlife photography, high resolution, 4k, 8k
a car driving on a road through the desert, dust, heat, summer, wide angle, realistic, photorealistic
an astronaut riding a horse on the moon, stars, space, earth in the background, epic, award winning
a house in the woods with a small garden, warm light in the windows, cozy, autumn leaves, fog
ugly, deformed, blurry, bad anatomy, bad hands, extra fingers, missing fingers, low quality, worst quality
watermark, text, signature, jpeg artifacts, cropped, out of frame, duplicate, disfigured, mutation
the quick brown fox jumps over the lazy dog while the children watch from the garden and laugh
there is a small black and white cat with yellow eyes that likes to sleep in the sun every day
people are walking along the beach, the water is clear and the sand is white, palm trees, tropical
a man and a woman dancing in a ballroom, elegant dress, suit, chandelier, vintage, film grain
anime style illustration of a girl with a sword, dynamic pose, detailed background, vivid
black and white photograph of a train station in the nineteen fifties, people waiting, smoke
macro shot of a water drop on a leaf, green, fresh, morning dew, shallow depth of field
a dragon flying over a medieval village, fire, smoke, night, moonlight, dark fantasy, detailed
interior of a modern living room, large windows, wooden floor, plants, minimalist, architecture
a plate of pasta with tomato sauce and basil, food photography, restaurant, delicious, warm tones
a robot reading a book in a library, shelves, soft light, quiet, thoughtful, octane render
this is what it looks like when you are looking at the world through the eyes of a child
she was standing by the door, her hands in her pockets, looking out at the rain and thinking
he said that they would come back in the evening, but nobody knew when they would be home again
smiling, happy, sad, angry, beautiful, pretty, handsome, old, young, small, big, large, tiny
red, orange, yellow, green, blue, purple, pink, brown, black, white, gray, grey, gold, silver
one, two, three, four, five, six, seven, eight, nine, ten, first, second, third, last, many
hair, face, eyes, nose, mouth, lips, skin, hands, arms, legs, body, head, smile, teeth, ears
"""


def bytes_to_unicode() -> dict[int, str]:
    """The byte-to-printable-character table of GPT-2 and CLIP (byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


# CLIP's pre-tokenizer (the letters, digits and punctuation runs of a lower-cased text).
WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+")


def train(corpus: str, num_merges: int) -> tuple[dict[str, int], list[str]]:
    byte_map = bytes_to_unicode()
    counts = collections.Counter(WORD.findall(corpus.lower()))
    words = {
        (*(byte_map[b] for b in w.encode()[:-1]), byte_map[w.encode()[-1]] + END): c
        for w, c in counts.items()
    }
    merges: list[str] = []
    for _ in range(num_merges):
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for symbols, count in words.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += count
        if not pairs:
            break
        # Most frequent pair; ties broken by the pair itself so that the result is reproducible.
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(f"{best[0]} {best[1]}")
        merged: dict[tuple[str, ...], int] = {}
        for symbols, count in words.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + count
        words = merged
    alphabet = list(byte_map.values())
    tokens = alphabet + [c + END for c in alphabet] + [m.replace(" ", "") for m in merges] + list(SPECIALS)
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def render() -> dict[str, str]:
    vocab, merges = train(CORPUS, NUM_MERGES)
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False, indent=0) + "\n",
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
    }


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        stale = [name for name, text in files.items() if (HERE / name).read_text(encoding="utf-8") != text]
        if stale:
            print("stale:", ", ".join(stale))
            return 1
        return 0
    for name, text in files.items():
        (HERE / name).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
