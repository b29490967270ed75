"""The simulated model does believable work, is sometimes wrong in ways checks and
reviewers catch, and its confidence is calibrated (issue 10, item 3).

No database and no sleeping: ``simulate`` and ``SimulatedProvider.judge`` answer a
request the way ``complete`` would, and say whether the answer is right."""

from __future__ import annotations

import json
import random
import re
import statistics
from pathlib import Path

import pytest
import yaml

from andon.inspection import inspect, parse_checks
from boards import demo_feed
from boards.agents import REVIEW_FEEDBACK_NOTE, render_prompt
from boards.agents.providers import ModelRequest, get_provider
from boards.agents.simulated import (
    CONFIDENCE_MAX,
    SIMULATED_PROFILES,
    SimulatedProvider,
    best_label,
    read_prompt,
    simulate,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODELS = ("sim-small", "sim-medium", "sim-large")

# The shipped agents' prompts, as they stood when these tests were written (the
# example files may be tuned; these tests pin the model's behaviour, not the demo's).
TICKET_CLASSIFIER = """Classify this support ticket.
category: billing, shipping, account_access, bug, feature_request,
cancellation, invoice, food_safety, other.
urgency: high (money taken wrongly, safety, a deadline within 48 h),
normal, low.
Answer as JSON only: {{"category": "...", "urgency": "...", "reason": "..."}}
{last_error}

Ticket {title}:
{input}"""
DEFECT_CLASSIFIER = """You classify defects found in visual inspection of machined parts.
Classes: dimensional, surface_finish, burr, porosity, crack, contamination,
thread, none. Severity: critical (safety or function), major (fails the
drawing), minor (cosmetic).
Answer as JSON only: {{"defect_class": "...", "severity": "...", "evidence": "..."}}
A crack is always critical. If unsure, say so in evidence.
{last_error}

Inspection ({title}):
{input}"""
MEASUREMENTS = """You read inspection reports of machined parts.
Report: {title}
List every measured characteristic on its own line as
characteristic | nominal | tolerance | measured | IN or OUT of tolerance.
Do not round measured values. If a value is missing, write "not reported".
{last_error}

Report text:
{input}"""
ANALYST = """You are a careful analyst. Work only from the input; never invent figures.
Task: {title}
For extractions, list each item on its own line as "field: value".
If an earlier attempt failed, it said: {last_error}

Input:
{input}"""
QUICK = """You are a concise assistant on an office work line.
Task: {title}
Answer in at most five short sentences; for a classification give the label first.
{last_error}

Input:
{input}"""
REPLY = """Write a reply to {customer} for a support agent to check and send.
Tone: warm, direct, no jargon, under 150 words. Start with the answer, not
with thanks. State amounts and dates exactly as given; promise nothing the
facts below do not support. Sign off as "The support team".
{last_error}

Case: {title}
Facts:
{facts}"""
THREAD_SUMMARY = """Summarise this support thread for a team lead who has not seen it.
Give: what the customer wants now; the history in at most five dated
bullets; money already refunded or credited; open internal cases;
risks (safety, legal, churn). Quote the customer only where it matters.
{last_error}

Thread {title}:
{input}"""

CHARGED_TWICE = (
    "Hi, my card was charged 29.00 twice on 3 March for the same subscription. "
    "Please refund one of them. Order ref SUB-77120."
)
CRACK = (
    "Hairline crack visible under dye penetrant, 4 mm long, starting at the shoulder fillet radius. "
    "Other 11 parts from the lot passed dye penetrant."
)
CMM = (
    "Bore A diameter nominal 42.000 mm, tol +0.025/-0.000, measured 42.031. Bore B nominal 18.000, "
    "tol +/-0.010, measured 18.004. Flatness of face C 0.02 max, measured 0.012. Position of holes "
    "1-4 to datum A|B: 0.05 max, measured 0.038, 0.041, 0.047, 0.052. Surface Ra on bore A 0.8 max, 0.74."
)
LEASE = (
    "The lease for Unit 4B runs until 30 June. Notice of renewal is due 90 days before expiry. Rent "
    "rises 3.5% from 1 July; the landlord offers a 2-year term at a fixed 2.8% if signed by 15 April."
)
MEMO = (
    "Revenue 4.2M (+11% YoY) against a plan of 4.4M; gross margin 38.5% (plan 40%). The gap is freight: "
    "container rates rose 27% in the quarter. Headcount 61 (+4). Cash 2.9M, runway 19 months at current "
    "burn. Proposals: raise prices 4% on 120 SKUs, renegotiate two freight contracts, pause the Benelux "
    "expansion to Q3. Questions for the board: approve the price rise? Approve a 250k line of credit? "
    "Is Q3 realistic for Benelux given the 6-month hiring lead time?"
)
REPLY_INPUT = json.dumps(
    {
        "customer": "Laura M.",
        "facts": "Charged 29.00 twice on 3 March (SUB-77120). Billing confirms a duplicate capture caused "
        "by a payment-provider retry; refund of 29.00 issued today, 3-5 business days to appear. "
        "Apologise, confirm the amount and timing, no discount code needed unless she asks.",
    }
)
THREAD = """12 Feb customer: box arrived warm, ice packs melted, meat smelled off. Threw it away.
12 Feb agent: apologised, issued a 29.00 credit.
19 Feb customer: again warm. Third time in 6 weeks. Is your courier even using cold chain?
19 Feb agent: refund 29.00, reported to logistics (case LOG-3341).
26 Feb customer: box fine this week but I want to know what changed.
5 Mar customer: warm AGAIN. I want all 4 boxes refunded (116.00) or I go to consumer protection.
5 Mar agent: escalating to team lead."""

UNCERTAINTY = parse_checks([{"check": "uncertainty"}])


def request(
    template: str, text: str, *, model: str = "sim-small", title: str = "Task", **extra
) -> ModelRequest:
    variables = {"input": text, "title": title, "last_error": "", "review_feedback": "", **extra}
    return ModelRequest(
        model=model, prompt=render_prompt(template, variables), input=text, settings={"error_rate": 0}
    )


def reply_request(model: str = "sim-medium", **facts_override) -> ModelRequest:
    data = {**json.loads(REPLY_INPUT), **facts_override}
    text = json.dumps(data)
    return request(
        REPLY, text, model=model, title="Reply to #48213", customer=data["customer"], facts=data["facts"]
    )


def variants(req: ModelRequest, n: int) -> list[ModelRequest]:
    """The same request with n different harmless reference numbers appended to the
    input: another draw of the model on the same kind of work."""
    out = []
    for i in range(n):
        text = f"{req.input} (ref {1000 + i})"
        out.append(
            ModelRequest(
                model=req.model, prompt=req.prompt.replace(req.input, text), input=text, settings=req.settings
            )
        )
    return out


def figures(text: str) -> set[str]:
    return set(re.findall(r"\d+(?:[.,]\d+)*", text))


# --- calibration ------------------------------------------------------------------------------


def _demo_tasks(board: dict, per_entry: int = 3) -> list[dict]:
    """Tasks the demo feed writes from a board's entries (templates with slots,
    boards.demo_feed): a few per entry, each filled afresh."""
    entries = [
        {**entry, "slots": demo_feed.normal_slots(entry["slots"])} if entry.get("slots") else entry
        for entry in board.get("demo_tasks") or []
    ]
    settings = demo_feed.FeedSettings(seed=7, repeat_share=0)
    return [demo_feed.demo_task_at(entries, settings, n) for n in range(per_entry * len(entries))]


def _example_requests() -> list[tuple[str, str, dict, list[str]]]:
    """(template, title, variables, models) for every shipped agent and each of its demo tasks."""
    out = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        tasks = [task for board in document.get("boards") or [] for task in _demo_tasks(board)]
        for agent in document.get("agents") or []:
            template = agent.get("prompt_template")
            if not template:
                continue
            declared = agent.get("prompt_variables") or []
            for task in tasks:
                capability = task.get("capability")
                if capability and capability not in (agent.get("capabilities") or []):
                    continue
                text = task.get("input") or ""
                variables = {"input": text, "title": task["title"], "last_error": "", "review_feedback": ""}
                if declared:
                    data = json.loads(text)
                    variables.update({name: str(data[name]) for name in declared})
                out.append((template, task["title"], variables, [tier["model"] for tier in agent["cascade"]]))
    return out


def _calibration_mix(n: int) -> list[ModelRequest]:
    """Realistic traffic: the shipped agents on their demo tasks, with inputs varied
    (a reference, extra questions, a repeated paragraph), on every model, and some
    prompts changed as a kaizen loop or a careless edit would (examples, a reviewer's
    note, a template that lost its {input})."""
    rng = random.Random(20240610)
    base = _example_requests()
    assert len(base) >= 40, "the example files should give many (agent, task) pairs"
    requests = []
    while len(requests) < n:
        template, title, variables, models = rng.choice(base)
        variables = dict(variables)
        text = variables["input"]
        roll = rng.random()
        if not text.startswith("{"):
            if roll < 0.15:
                text = f"{text} Is this the third time? Can you check order {rng.randint(10, 99999)} too?"
            elif roll < 0.25:
                text = f"{text} {text} Also see ticket {rng.randint(100, 999)}."
            else:
                text = f"{text} (ref {rng.randint(1000, 999999)})"
            variables["input"] = text
        prompt = render_prompt(template, variables)
        change = rng.random()
        if change < 0.08:
            prompt = prompt.replace(text, "") if text else prompt  # the template lost its {input}
        elif change < 0.16:
            prompt += REVIEW_FEEDBACK_NOTE.format(feedback="the figures do not match the input")
        elif change < 0.22:
            prompt = (
                "Examples:\nInput: card charged twice -> billing\nInput: parcel late -> shipping\n" + prompt
            )
        model = rng.choice(MODELS) if rng.random() < 0.6 else rng.choice(models)
        requests.append(ModelRequest(model=model, prompt=prompt, input=text, settings={"error_rate": 0}))
    return requests


def test_confidence_is_calibrated_on_ten_thousand_calls():
    """In each decile of confidence, the share of right answers is within 5 points of
    the mean confidence there (deciles with under 100 answers are too noisy to judge)."""
    answers = [simulate(r) for r in _calibration_mix(10_000)]
    deciles: dict[int, list] = {}
    for answer in answers:
        deciles.setdefault(min(9, int(answer.confidence * 10)), []).append(answer)
    judged = {d: xs for d, xs in deciles.items() if len(xs) >= 100}

    assert len(judged) >= 7, {d: len(xs) for d, xs in sorted(deciles.items())}
    for decile, xs in sorted(judged.items()):
        confidence = statistics.fmean(a.confidence for a in xs)
        right = statistics.fmean(a.correct for a in xs)
        assert abs(right - confidence) <= 0.05, (decile, len(xs), round(confidence, 3), round(right, 3))
    # Not calibrated by saying one number: the answers spread over the scale.
    assert statistics.pstdev(a.confidence for a in answers) > 0.15


def test_confidence_never_reaches_one():
    answers = [simulate(r) for r in variants(request(DEFECT_CLASSIFIER, CRACK, model="sim-large"), 300)]
    assert max(a.confidence for a in answers) <= CONFIDENCE_MAX < 1


# --- deterministic, and weaker when cheaper or harder ---------------------------------------------


def test_the_same_request_gives_the_same_answer_and_judge_agrees_with_complete():
    req = request(TICKET_CLASSIFIER, CHARGED_TWICE, title="#48213 Charged twice")
    provider = SimulatedProvider(latency_scale=0)
    response = provider.complete(req)
    answer = provider.judge(req)

    assert provider.complete(req) == response
    assert (answer.text, answer.confidence) == (response.text, response.confidence)
    assert response.confidence_source == "simulated"
    assert get_provider("simulated").simulated


def test_cheaper_models_and_harder_inputs_are_right_less_often():
    easy = request(QUICK, "Do you ship to Iceland?", title="Classify a website contact form message")
    hard = request(QUICK, MEMO, title="Summarise the quarterly board memo")

    def accuracy(req: ModelRequest, model: str) -> float:
        reqs = variants(
            ModelRequest(model=model, prompt=req.prompt, input=req.input, settings=req.settings), 300
        )
        return statistics.fmean(simulate(r).correct for r in reqs)

    small, medium, large = (accuracy(hard, m) for m in MODELS)
    assert small < medium < large
    assert accuracy(easy, "sim-small") > small + 0.2


# --- believable work, per kind ---------------------------------------------------------------------


def right_answers(req: ModelRequest, n: int = 60) -> list:
    return [a for a in map(simulate, variants(req, n)) if a.correct]


def wrong_answers(req: ModelRequest, n: int = 300) -> list:
    return [a for a in map(simulate, variants(req, n)) if not a.correct]


def test_a_classification_answers_with_the_prompts_labels_as_the_json_asked():
    answer = simulate(
        request(TICKET_CLASSIFIER, CHARGED_TWICE, model="sim-large", title="#48213 Charged twice")
    )
    assert answer.correct and answer.kind == "classify"
    data = json.loads(answer.text)
    assert data["category"] == "billing" and data["urgency"] == "high"
    assert "29.00" in data["reason"]

    crack = json.loads(simulate(request(DEFECT_CLASSIFIER, CRACK, model="sim-large")).text)
    assert (crack["defect_class"], crack["severity"]) == ("crack", "critical")


def test_labels_follow_the_input_not_the_order_of_the_label_set():
    labels = ("billing", "shipping", "account_access", "bug", "feature_request", "other")
    assert best_label(labels, "category", "Tracking has not moved since Wednesday. Any news?") == "shipping"
    assert best_label(labels, "category", "The app closes when I enter a voucher.") == "bug"
    assert best_label(labels, "category", "Could you add a way to pause my box?") == "feature_request"
    assert best_label(labels, "category", "Lovely weather today.") == "other"
    assert best_label(("low", "normal", "high"), "urgency", "Lovely weather this week.") == "normal"


def test_a_classification_without_a_label_set_gives_a_label_first_and_a_reason():
    answer = simulate(
        request(
            QUICK,
            "I reset my password twice and still cannot log in. Is the site down?",
            model="sim-large",
            title="Classify a support ticket about login",
        )
    )
    label, reason = answer.text.split("\n", 1)
    assert label == "account_access"
    assert reason.startswith("Reason: ") and "password" in reason


def test_a_measurement_table_copies_the_values_and_judges_them_against_tolerance():
    answer = simulate(request(MEASUREMENTS, CMM, model="sim-large", title="CMM report HX-220"))
    assert answer.correct
    header, *rows = answer.text.splitlines()
    assert header == "characteristic | nominal | tolerance | measured | IN or OUT of tolerance"
    table = {row.split(" | ")[0]: row.split(" | ") for row in rows}
    assert table["Bore A diameter"] == ["Bore A diameter", "42.000", "+0.025/-0.000", "42.031", "OUT"]
    assert table["Bore B"][-1] == "IN"
    assert table["Flatness of face C"][1:] == ["not reported", "0.02 max", "0.012", "IN"]
    assert any(row[-1].startswith("OUT") and "0.052" in row[-1] for row in table.values())
    assert figures(answer.text) <= figures(CMM)


def test_an_extraction_gives_field_value_lines_taken_from_the_input():
    answer = simulate(
        request(ANALYST, LEASE, model="sim-large", title="Extract the key dates from the lease renewal")
    )
    assert answer.correct and answer.kind == "extract"
    lines = answer.text.splitlines()
    assert all(re.match(r"^[^:]+: .+", line) for line in lines)
    assert {"30 June", "15 April", "1 July"} <= {d for line in lines for d in re.findall(r"\d+ \w+", line)}
    assert figures(answer.text) <= figures(LEASE)


def test_a_summary_is_shorter_made_of_the_inputs_sentences_and_within_the_limit():
    for answer in right_answers(
        request(QUICK, MEMO, model="sim-large", title="Summarise the quarterly board memo")
    ):
        assert len(answer.text) < len(MEMO)
        sentences = re.split(r"(?<=[.?!])\s+", answer.text)
        assert 1 <= len(sentences) <= 5
        assert figures(answer.text) <= figures(answer.text) & figures(MEMO + " 1000 1059")  # only the input's


def test_a_draft_is_in_the_register_asked_with_the_facts_and_sign_off():
    answer = simulate(reply_request("sim-large"))
    assert answer.correct and answer.kind == "draft"
    text = answer.text
    assert text.startswith("Hi Laura,")  # warm: first name
    assert text.rstrip().endswith("The support team")
    assert "29.00" in text and "3-5 business days" in text
    body = text.split("\n\n")[1]
    assert not body.startswith("Thank")  # "start with the answer, not with thanks"
    assert len(text.split()) < 150
    assert not re.search(r"\bApologise\b|unless she asks", text)  # instructions are not copied

    formal = REPLY.replace("warm, direct, no jargon", "formal and courteous")
    text = simulate(
        request(
            formal,
            REPLY_INPUT,
            model="sim-large",
            title="Reply",
            customer="Laura M.",
            facts=json.loads(REPLY_INPUT)["facts"],
        )
    ).text
    assert text.startswith("Dear Laura M.,") and "Kind regards," in text


def test_an_answer_in_sections_fills_each_section_from_the_input():
    answer = simulate(request(THREAD_SUMMARY, THREAD, model="sim-large", title="#47902"))
    assert answer.correct
    text = answer.text
    assert "What the customer wants now: “" in text and "116.00" in text
    history = re.search(r"History:\n((?:- .*\n?)+)", text).group(1).splitlines()
    assert len(history) == 5 and all(re.match(r"- \d+ \w{3}", item) for item in history)
    assert "Money already refunded or credited: 29.00 credit (12 Feb) + 29.00 refund (19 Feb) = 58.00" in text
    assert "Open internal cases: LOG-3341" in text
    assert re.search(r"Risks: safety \(.+\); legal \(.+\); churn \(.+\)", text)


# --- wrong in ways the line's checks or a reviewer catch ----------------------------------------------


def test_wrong_classifications_break_the_label_set_or_the_json_or_pick_another_label():
    schema = {
        "type": "object",
        "required": ["category", "urgency", "reason"],
        "properties": {
            "category": {"enum": list(read_prompt(TICKET_CLASSIFIER).label_sets[0].labels)},
            "urgency": {"enum": ["high", "normal", "low"]},
        },
    }
    checks = parse_checks([{"check": "json", "schema": schema}])
    req = request(TICKET_CLASSIFIER, CHARGED_TWICE, model="sim-small", title="#48213")
    wrong = wrong_answers(req, 600)
    right = right_answers(req, 60)
    caught_by_checks = 0
    for answer in wrong:
        assert answer.flaw
        verdict = inspect(answer.text, confidence=answer.confidence, checks=checks)
        if not verdict.passed:
            caught_by_checks += 1
        else:  # the reviewer's catch: a label from the set, but not the right one
            data = json.loads(answer.text)
            assert (data["category"], data["urgency"]) != ("billing", "high"), answer.text
    assert len(wrong) >= 30
    assert caught_by_checks >= len(wrong) * 0.3  # label outside the set, missing field, bad JSON
    assert all(inspect(a.text, confidence=a.confidence, checks=checks).passed for a in right)


def test_wrong_extractions_invent_a_figure_drop_a_row_or_flip_a_verdict():
    req = request(MEASUREMENTS, CMM, model="sim-small", title="CMM report HX-220")
    right_text = simulate(request(MEASUREMENTS, CMM, model="sim-large", title="CMM report HX-220")).text
    wrong = wrong_answers(
        ModelRequest(model="sim-small", prompt=req.prompt, input=req.input, settings=req.settings)
    )
    assert len(wrong) >= 30
    kinds = set()
    for answer in wrong:
        text = answer.text.replace(" (ref 1", " (ref ")  # the variant's own reference is not a figure
        invented = figures(answer.text) - figures(answer.text.split("\n", 1)[0]) - figures(CMM) - {"1", "0"}
        hedged = not inspect(answer.text, confidence=None, checks=UNCERTAINTY).passed
        fewer_rows = len(answer.text.splitlines()) < len(right_text.splitlines())
        flipped = not invented and not fewer_rows and not hedged
        assert invented or fewer_rows or hedged or flipped, text
        if flipped:
            assert answer.text != right_text
        kinds.add("invented" if invented else "fewer" if fewer_rows else "hedged" if hedged else "flipped")
    assert {"invented", "fewer", "flipped"} <= kinds


def test_wrong_drafts_have_the_wrong_tone_a_wrong_figure_another_sign_off_or_run_long():
    wrong = []
    for i in range(300):
        answer = simulate(reply_request("sim-small", customer=f"Laura M{i}."))
        if not answer.correct:
            wrong.append(answer)
    assert len(wrong) >= 20
    for answer in wrong:
        text = answer.text
        tone = not text.startswith("Hi Laura")
        invented = bool(figures(text) - figures(REPLY_INPUT) - figures(answer.flaw.split("(it says")[0][:0]))
        sign_off = not text.rstrip().endswith("The support team")
        long = len(text.split()) > 150
        assert tone or invented or sign_off or long, text


def test_a_prompt_that_asks_to_say_when_unsure_gets_hedges_the_uncertainty_check_catches():
    answers = list(map(simulate, variants(request(DEFECT_CLASSIFIER, CRACK, model="sim-small"), 400)))
    unsure = [a for a in answers if a.confidence < 0.6]
    assert unsure
    for answer in answers:
        hedged = not inspect(answer.text, confidence=None, checks=UNCERTAINTY).passed
        assert hedged == (answer.confidence < 0.6), (answer.confidence, answer.text)


# --- prompt changes change its behaviour ------------------------------------------------------------


def mean_p(template: str, text: str, *, model: str = "sim-small", **extra) -> float:
    return simulate(request(template, text, model=model, **extra)).p


def test_examples_help_most_on_matching_inputs():
    burr = "Burr on the outer edge of slot 2, about 0.3 mm high, sharp to the touch."
    matching = DEFECT_CLASSIFIER.replace(
        "A crack is always",
        'Examples:\nInput: burr on slot 1, sharp edge -> {{"defect_class": "burr", "severity": "minor"}}\n'
        "A crack is always",
    )
    other = DEFECT_CLASSIFIER.replace(
        "A crack is always",
        'Examples:\nInput: oil on the face -> {{"defect_class": "contamination", "severity": "minor"}}\n'
        "A crack is always",
    )
    base, with_other, with_matching = (mean_p(t, burr) for t in (DEFECT_CLASSIFIER, other, matching))
    assert base < with_other < with_matching


def test_label_definitions_and_a_reviewers_note_help():
    defined = TICKET_CLASSIFIER.replace(
        "cancellation, invoice, food_safety, other.",
        "cancellation, invoice, food_safety, other.\nbilling: charges, refunds, payments\n"
        "shipping: parcels, tracking, delivery\naccount_access: log-in and password problems\n"
        "bug: the app or site misbehaves\nfeature_request: something new asked for\n",
    )
    assert mean_p(defined, CHARGED_TWICE) > mean_p(TICKET_CLASSIFIER, CHARGED_TWICE)
    noted = TICKET_CLASSIFIER + REVIEW_FEEDBACK_NOTE.format(feedback="urgency is high when money was taken")
    assert mean_p(noted, CHARGED_TWICE) > mean_p(TICKET_CLASSIFIER, CHARGED_TWICE) + 0.03


def test_an_empty_reviewer_note_in_the_template_changes_nothing():
    placed = TICKET_CLASSIFIER + "\nA reviewer said of your last answer: {review_feedback}"
    first = mean_p(placed, CHARGED_TWICE)
    retry = mean_p(placed, CHARGED_TWICE, review_feedback="urgency is high when money was taken")
    assert first == mean_p(TICKET_CLASSIFIER, CHARGED_TWICE) < retry


def test_a_broken_template_hurts_badly():
    no_input = TICKET_CLASSIFIER.replace("{input}", "")
    placeholder = TICKET_CLASSIFIER.replace("{input}", "{input}\nCustomer: {{customer}}")
    for model in MODELS:
        assert mean_p(no_input, CHARGED_TWICE, model=model) <= 0.08
        # An unfilled {customer}: two and a half times as many wrong answers, or more.
        good = mean_p(TICKET_CLASSIFIER, CHARGED_TWICE, model=model)
        assert 1 - mean_p(placeholder, CHARGED_TWICE, model=model) >= 2.5 * (1 - good)
    # Without the input, the answer can only come from the title.
    answer = simulate(request(no_input, CHARGED_TWICE, model="sim-large", title="#48213 Charged twice"))
    assert "29.00" not in answer.text


def test_brevity_and_word_limits_shorten_the_output():
    long = simulate(request("Summarise this memo.\n{input}", MEMO, model="sim-large")).text
    brief = simulate(request("Summarise this memo. Be brief.\n{input}", MEMO, model="sim-large")).text
    assert len(brief) < len(long)
    for answer in right_answers(request("Summarise in at most 25 words.\n{input}", MEMO, model="sim-large")):
        assert len(answer.text.split()) <= 25


def test_the_documented_model_profiles_exist():
    assert set(SIMULATED_PROFILES) == set(MODELS)
    skills = [SIMULATED_PROFILES[m].skill for m in MODELS]
    assert skills == sorted(skills)


@pytest.mark.parametrize("model", MODELS)
def test_every_shipped_agent_and_demo_task_gets_a_non_empty_answer_of_the_right_kind(model):
    expected = {
        "Classify": "classify",
        "Extract": "extract",
        "List every": "extract",
        "Summarise": "summarise",
    }
    for template, title, variables, _ in _example_requests():
        text = variables["input"]
        answer = simulate(
            ModelRequest(
                model=model, prompt=render_prompt(template, variables), input=text, settings={"error_rate": 0}
            )
        )
        assert answer.text.strip(), (template[:40], title)
        for cue, kind in expected.items():
            if template.lstrip().startswith(cue):
                assert answer.kind in (kind, "sections"), (template[:40], title, answer.kind)
        if answer.correct and answer.kind == "summarise" and text:
            assert len(answer.text) <= len(text)
