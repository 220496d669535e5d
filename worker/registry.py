"""What a worker runs: the workflow classes and the activity callables bound to their clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from activities.await_job import AwaitActivities
from activities.fhir_route import FhirRouteActivities
from activities.importjob import ImportActivities
from activities.ingest import IngestActivities
from activities.normalize import NormalizeActivities
from activities.parse import ParseActivities
from activities.plan import PlanActivities
from activities.receive import ReceiveActivities
from activities.reconcile import ReconcileActivities
from activities.report import ReportActivities
from activities.review import FailedBatchActivities, ReviewActivities
from activities.route import RouteActivities
from activities.signed_http import SignedHttp
from activities.sources.dicomweb import DicomwebAuth
from activities.sources.move_receiver import MoveDestination
from activities.sources.registry import SourceSettings
from activities.spotcheck import SpotChecker
from activities.validate import ValidateActivities
from worker.aws import AwsClients
from worker.settings import InvalidSettings, Settings
from workflows.batch import ImportBatchWorkflow
from workflows.ingest import IngestWorkflow
from workflows.migration import MigrationWorkflow
from workflows.reconciliation import ReconciliationWorkflow

WORKFLOWS: list[type] = [MigrationWorkflow, ImportBatchWorkflow, ReconciliationWorkflow, IngestWorkflow]


def build_activities(clients: AwsClients, settings: Settings) -> list[Callable[..., Any]]:
    if problems := settings.worker_problems():  # settings built directly rather than by load_settings
        raise InvalidSettings(problems)
    s3, mi = clients.s3, clients.medical_imaging
    auth = DicomwebAuth(
        username=settings.dicomweb_username,
        password=settings.dicomweb_password.get_secret_value() if settings.dicomweb_password else None,
        token=settings.dicomweb_token.get_secret_value() if settings.dicomweb_token else None)
    receive = ReceiveActivities(s3, SourceSettings(
        dicomweb_auth=auth, dicomweb_allowed_origins=settings.allowed_origins(),
        timeout_seconds=settings.source_timeout_seconds, local_roots=settings.local_roots(),
        dimse_move=(MoveDestination(settings.dimse_move_ae_title, settings.dimse_move_host, settings.dimse_move_port)
                    if settings.dimse_move_ae_title and settings.dimse_move_port else None),
        dimse_retrievals_per_source=settings.dimse_retrievals_per_source))
    parse = ParseActivities(s3, settings.parse_concurrency, fingerprint_key=settings.fingerprint_secret())
    validate = ValidateActivities(s3)
    normalize = NormalizeActivities(s3)
    plan = PlanActivities(s3, mi)
    start = ImportActivities(s3, mi, cast(str, settings.data_access_role_arn), settings.parse_concurrency)
    await_job = AwaitActivities(mi, settings.job_poll_initial_seconds, settings.job_poll_max_seconds)
    dicomweb = SignedHttp(clients.credentials, settings.aws_region, "medical-imaging") if clients.credentials else None
    review = ReviewActivities(s3, mi, SpotChecker(mi, dicomweb, settings.dicomweb_base_url()))
    fhir = FhirRouteActivities(
        s3, mi, clients.healthlake,
        SignedHttp(clients.credentials, settings.aws_region, "healthlake") if clients.credentials else None,
        settings.dicomweb_base_url(), settings.healthlake_data_access_role_arn, settings.healthlake_kms_key_id,
        settings.job_poll_initial_seconds, settings.job_poll_max_seconds)
    failed = FailedBatchActivities(s3)
    route = RouteActivities(s3, clients.events, settings.event_bus_name)
    report = ReportActivities(s3)
    recon = ReconcileActivities(mi, clients.events, settings.event_bus_name,
                                fingerprint_key=settings.fingerprint_secret(),
                                attestation_key=settings.reviewer_attestation_secret(),
                                reviewers=settings.reconciliation_reviewer_list())
    ingest = IngestActivities(s3)
    return [
        receive.receive_inventory, parse.parse_headers, validate.validate_page, normalize.normalize_page,
        plan.plan_batches, plan.split_batch, start.start_import_job, await_job.await_import_job, review.review_manifest,
        failed.record_failed_batch, route.route_batch, report.write_report,
        fhir.start_fhir_import, fhir.await_fhir_import, fhir.review_fhir_import,
        recon.describe_conflict, recon.await_image_set, recon.update_before_promote, recon.promote_image_set,
        recon.delete_image_set, recon.publish_escalation, recon.verify_reviewer, ingest.write_ingest_manifest,
    ]
