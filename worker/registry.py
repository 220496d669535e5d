"""What a worker runs: the workflow classes and the activity callables bound to their clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from activities.await_job import AwaitActivities
from activities.bearer_http import BearerHttp
from activities.client_credentials import ClientCredentials, TokenSource
from activities.copy_lanes import CopyLanes
from activities.fhir_route import FhirRouteActivities
from activities.importjob import ImportActivities
from activities.ingest import IngestActivities
from activities.job_admission import StartPacer
from activities.normalize import NormalizeActivities
from activities.parse import ParseActivities
from activities.plan import PlanActivities
from activities.plan_adopt import AdoptActivities
from activities.plan_report import EstimateRates, PlanReportActivities
from activities.receive import ReceiveActivities
from activities.reconcile import ReconcileActivities
from activities.reconcile_sweep import SweepActivities
from activities.report import ReportActivities
from activities.review import FailedBatchActivities, ReviewActivities
from activities.rollback import RollbackActivities
from activities.route import RouteActivities
from activities.signed_http import SignedHttp
from activities.sources.dicomweb import DicomwebAuth
from activities.sources.move_receiver import MoveDestination
from activities.sources.registry import SourceSettings
from activities.spotcheck import SpotChecker
from activities.validate import ValidateActivities
from activities.verify import VerifyActivities
from worker.aws import AwsClients
from worker.settings import InvalidSettings, Settings
from workflows.batch import ImportBatchWorkflow
from workflows.ingest import IngestWorkflow
from workflows.migration import MigrationWorkflow
from workflows.plan import PlanWorkflow
from workflows.reconciliation import ReconciliationWorkflow
from workflows.rollback import RollbackWorkflow
from workflows.sweep import ReconciliationSweepWorkflow
from workflows.verify import SourceVerifyWorkflow, VerifyWorkflow

WORKFLOWS: list[type] = [MigrationWorkflow, ImportBatchWorkflow, ReconciliationWorkflow, IngestWorkflow,
                         RollbackWorkflow, VerifyWorkflow, ReconciliationSweepWorkflow, SourceVerifyWorkflow,
                         PlanWorkflow]


def token_source(settings: Settings, prefix: str) -> TokenSource | None:
    """The OAuth2 client of ``HIMIG_<PREFIX>_*`` (one per process: every activity thread shares its token)."""
    url, client_id, secret = (getattr(settings, f"{prefix}_{n}") for n in ("token_url", "client_id", "client_secret"))
    if url is None or client_id is None or secret is None:
        return None
    return TokenSource(ClientCredentials(url, client_id, secret.get_secret_value(), getattr(settings, f"{prefix}_scope"),
                                         setting=f"HIMIG_{prefix.upper()}"),
                       timeout=settings.source_timeout_seconds)


def healthimaging_dicomweb(clients: AwsClients, settings: Settings) -> SignedHttp | BearerHttp | None:
    """OIDC bearer tokens when the data store is configured for them (``HIMIG_HEALTHIMAGING_OIDC_*``), else SigV4
    with the worker's AWS credentials; None without either (the DICOMweb spot check is then off)."""
    tokens = token_source(settings, "healthimaging_oidc")
    if tokens is not None:
        return BearerHttp(tokens)
    return SignedHttp(clients.credentials, settings.aws_region, "medical-imaging") if clients.credentials else None


def build_activities(clients: AwsClients, settings: Settings) -> list[Callable[..., Any]]:
    if problems := settings.worker_problems():  # settings built directly rather than by load_settings
        raise InvalidSettings(problems)
    s3, mi = clients.s3, clients.medical_imaging
    auth = DicomwebAuth(
        username=settings.dicomweb_username,
        password=settings.dicomweb_password.get_secret_value() if settings.dicomweb_password else None,
        token=settings.dicomweb_token.get_secret_value() if settings.dicomweb_token else None,
        tokens=token_source(settings, "dicomweb_oidc"))
    sources = SourceSettings(
        dicomweb_auth=auth, dicomweb_allowed_origins=settings.allowed_origins(),
        timeout_seconds=settings.source_timeout_seconds, local_roots=settings.local_roots(),
        dimse_move=(MoveDestination(settings.dimse_move_ae_title, settings.dimse_move_host, settings.dimse_move_port)
                    if settings.dimse_move_ae_title and settings.dimse_move_port else None),
        dimse_retrievals_per_source=settings.dimse_retrievals_per_source)
    receive = ReceiveActivities(s3, sources)
    parse = ParseActivities(s3, settings.parse_concurrency, fingerprint_key=settings.fingerprint_secret(),
                            padding_rejected=settings.import_rejects_trailing_padding)
    validate = ValidateActivities(s3)
    normalize = NormalizeActivities(s3)
    plan = PlanActivities(s3, mi, settings.import_index_s3_uri)
    plan_report = PlanReportActivities(s3, EstimateRates(
        import_files_per_second=settings.plan_import_files_per_second,
        staging_copies_per_second=settings.plan_staging_copies_per_second,
        job_overhead_seconds=settings.plan_import_job_overhead_seconds,
        job_slots_cap=settings.datastore_max_running_jobs,
        start_tps=min(settings.import_start_initial_tps, settings.import_start_max_tps)))
    adopt = AdoptActivities(s3)
    pacer = StartPacer(initial_rate=min(settings.import_start_initial_tps, settings.import_start_max_tps),
                       max_rate=settings.import_start_max_tps,
                       min_rate=min(0.2, settings.import_start_initial_tps, settings.import_start_max_tps))
    start = ImportActivities(s3, mi, cast(str, settings.data_access_role_arn), settings.parse_concurrency, pacer,
                             settings.datastore_max_running_jobs, CopyLanes(settings.staging_copy_concurrency))
    await_job = AwaitActivities(mi, settings.job_poll_initial_seconds, settings.job_poll_max_seconds)
    dicomweb = healthimaging_dicomweb(clients, settings)
    review = ReviewActivities(s3, mi, SpotChecker(mi, dicomweb, settings.dicomweb_base_url()),
                              settings.import_index_s3_uri)
    fhir = FhirRouteActivities(
        s3, mi, clients.healthlake,
        SignedHttp(clients.credentials, settings.aws_region, "healthlake") if clients.credentials else None,
        settings.dicomweb_base_url(), settings.healthlake_data_access_role_arn, settings.healthlake_kms_key_id,
        settings.job_poll_initial_seconds, settings.job_poll_max_seconds, settings.import_index_s3_uri)
    failed = FailedBatchActivities(s3)
    route = RouteActivities(s3, clients.events, settings.event_bus_name)
    report = ReportActivities(s3, settings.dicomweb_base_url())
    recon = ReconcileActivities(mi, clients.events, settings.event_bus_name,
                                fingerprint_key=settings.fingerprint_secret(),
                                attestation_key=settings.reviewer_attestation_secret(),
                                reviewers=settings.reconciliation_reviewer_list())
    ingest = IngestActivities(s3)
    rollback = RollbackActivities(s3, mi)
    verify = VerifyActivities(s3, mi, clients.events, settings.event_bus_name, sources)
    sweep = SweepActivities(mi)
    return [
        receive.receive_inventory, parse.parse_headers, validate.validate_page, normalize.normalize_page,
        plan.plan_batches, plan.split_batch, start.start_import_job, await_job.await_import_job, review.review_manifest,
        failed.record_failed_batch, route.route_batch, report.write_report,
        fhir.start_fhir_import, fhir.await_fhir_import, fhir.review_fhir_import,
        recon.describe_conflict, recon.await_image_set, recon.update_before_promote, recon.promote_image_set,
        recon.delete_image_set, recon.publish_escalation, recon.verify_reviewer, ingest.write_ingest_manifest,
        rollback.plan_rollback, rollback.delete_image_sets, rollback.record_rollback, verify.verify_migration,
        verify.verify_source, verify.verify_pulled_source, verify.verify_listed_source,
        verify.check_verify_target,
        sweep.list_non_primary, plan_report.write_plan, adopt.adopt_plan,
    ]
