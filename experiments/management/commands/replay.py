"""python manage.py replay AGENT --candidate VERSION [--sample N]: replay a prompt
version on an agent's past work, here, with a progress bar, and print the verdict.

The steps run in this process (``experiments.genchi.replay_step``); a worker that
picks the replay up meanwhile (the resume beat) takes turns with it under the
replay's lease, so nothing runs twice. Ctrl-C cancels the replay.
"""

from __future__ import annotations

import time

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from boards.management.progress import Progress
from boards.models import Agent
from experiments import genchi
from experiments.models import PromptVersion, Replay


class Command(BaseCommand):
    help = "Replay a prompt version of an agent on its past tasks, beside the active version, and print the verdict."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("agent", help="The agent's name.")
        parser.add_argument("--candidate", type=int, required=True, help="The prompt version's number.")
        parser.add_argument(
            "--sample",
            type=int,
            help="Past tasks to replay (default: as many as the power calculation asks).",
        )
        parser.add_argument("--seed", type=int, help="The sample's seed (default: a random one, printed).")

    def handle(self, *args, **options) -> None:
        agent = Agent.objects.filter(name=options["agent"]).first()
        if agent is None:
            names = ", ".join(Agent.objects.order_by("name").values_list("name", flat=True)) or "none"
            raise CommandError(f"There is no agent {options['agent']!r} (agents: {names}).")
        number = options["candidate"]
        candidate = PromptVersion.objects.filter(agent=agent, number=number).first()
        if candidate is None:
            numbers = ", ".join(
                f"v{n}"
                for n in PromptVersion.objects.filter(agent=agent)
                .order_by("number")
                .values_list("number", flat=True)
            )
            raise CommandError(
                f"{agent.name} has no prompt version {number} (versions: {numbers or 'none'})."
            )
        if options["sample"] is not None and options["sample"] < 1:
            raise CommandError("--sample must be at least 1.")
        try:
            replay = genchi.replay_start(
                agent=agent,
                candidate=candidate,
                sample=options["sample"],
                seed=options["seed"],
                enqueue=False,
            )
        except genchi.ReplayOpen as exc:
            raise CommandError(
                f"A replay of v{number} is already {exc.replay.state} (id {exc.replay.pk}); "
                "wait for it or cancel it on the evolution review."
            ) from None
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        plan = replay.plan
        self.stdout.write(
            f"Replaying v{number} against v{replay.baseline.number} of {agent.name} on {replay.total} of "
            f"{plan['pool']} past tasks (seed {replay.seed}; {plan['power']:.0%} power to show it no worse "
            f"by {plan['margin']:.0%})."
        )
        progress = Progress(self.stdout, max(replay.total, 1), "replayed")
        try:
            while True:
                outcome = genchi.replay_step(replay.pk, seconds=2.0, hand_on=False)
                replay.refresh_from_db()
                progress(replay.done)
                if not replay.is_open:
                    break
                if outcome == "busy":
                    time.sleep(1.0)  # a worker holds it: follow its progress
        except KeyboardInterrupt:
            genchi.replay_cancel(replay=replay, user=None, note="cancelled from the command line")
            raise CommandError(f"Cancelled after {replay.done} of {replay.total}.") from None
        self._report(replay)

    def _report(self, replay: Replay) -> None:
        if replay.state != Replay.State.DONE:
            raise CommandError(f"The replay ended {replay.state}: {replay.reason}")
        s = replay.stats
        self.stdout.write(
            f"pairs {s['pairs']}: baseline passes {s['baseline_pass']}, candidate passes {s['candidate_pass']} "
            f"(both {s['both_pass']}, only baseline {s['only_baseline']}, only candidate {s['only_candidate']}, "
            f"neither {s['neither']})"
        )
        self.stdout.write(
            f"exact McNemar p = {s['mcnemar_p']:.4g}; non-inferiority at {s['noninferiority_margin']:.0%}: "
            f"p = {s['noninferiority_p']:.4g}"
        )
        low, high = s["cost_delta_ci"]
        self.stdout.write(f"cost per task: {low:+.6f} to {high:+.6f} $ (95% paired bootstrap)")
        low, high = s["latency_delta_ci"]
        self.stdout.write(f"latency per task: {low:+.1f} to {high:+.1f} ms")
        self.stdout.write(f"spent ${replay.spent_usd.normalize():f} (price of seeing, not production cost)")
        style = self.style.SUCCESS if replay.verdict == "pass" else self.style.ERROR
        self.stdout.write(style(f"verdict: {replay.verdict.upper()}: {replay.reason}"))
