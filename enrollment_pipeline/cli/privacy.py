"""`enrollment-pipeline erase APP_ID --reason TEXT [--yes]` (Contract 6): an applicant's personal
data erased everywhere the project keeps it, a thin command over `lib/erasure.py` (the job
`erase_applicant` runs the same function)."""

from __future__ import annotations

import getpass
import socket

import click

from enrollment_pipeline.cli.clients import enrollment_store
from enrollment_pipeline.cli.operate import _cli_lease
from enrollment_pipeline.lib.settings_errors import check
from enrollment_pipeline.settings import MongoSettings


def _operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown user"
    return f"{user}@{socket.gethostname()}"


@click.command()
@click.argument("application_id")
@click.option(
    "--reason",
    required=True,
    help="Why (the request it answers, e.g. a ticket number); recorded with the erasure. "
    "Put no personal data here.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def erase(application_id: str, reason: str, yes: bool) -> None:
    """Erase an applicant's personal data (names, email, phone, date of birth) everywhere the
    pipeline keeps it: the event store, the read model, dead letters' raw bytes and waiting
    leads. Ids, statuses and times stay, so the application still folds; a rebuild or a replay
    of its records keeps it erased (a tombstone in erased_applications), and no lead of it is
    published or delivered again. Each erasure is recorded in the collection erasures. It
    cannot be undone.

    Not reached from here: the CRM (send it a deletion request with the application id) and
    Kafka, whose retention removes the original records.

    \b
    Example:
      enrollment-pipeline erase APP-000123 --reason "privacy request #4711"
    """
    from enrollment_pipeline.lib.erasure import erase_application, plan_erasure

    check(MongoSettings)
    if not reason.strip():
        raise click.BadParameter("give the request it answers", param_hint="--reason")
    store = enrollment_store()
    plan = plan_erasure(store, application_id)
    if plan.nothing:
        raise click.ClickException(
            f"nothing names {application_id!r}: no event, document, dead letter or lead "
            "(application ids are case-sensitive)"
        )
    note = " (erased before: this finishes or repeats it)" if plan.already_erased else ""
    click.echo(
        f"{application_id}{note}: {plan.events} stored events, "
        f"{'a' if plan.document else 'no'} document, {plan.dead_letters} dead letters "
        f"(and any whose raw bytes carry its email or phone), {plan.waiting_leads} waiting "
        "leads. Their names, email, phone and date of birth are replaced; ids, statuses and "
        "times stay. This cannot be undone."
    )
    if not yes:
        click.confirm("Erase?", abort=True)
    report = erase_application(
        store,
        application_id,
        reason=reason,
        requested_by=f"enrollment-pipeline erase ({_operator()})",
        lease=_cli_lease(store, f"erase {application_id}"),
    )
    touched = ", ".join(f"{name} {count}" for name, count in report.touched.items())
    click.echo(f"erased {application_id} (erasure {report.erasure_id}): {touched}")
    click.echo(
        "Next: ask the CRM to delete this application's lead (no lead event can tell it "
        "to); Kafka keeps the original records until the topics' retention removes them."
    )
