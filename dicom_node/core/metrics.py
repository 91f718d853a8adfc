"""Ingest metrics. Labels come from bounded sets (outcomes, error codes), never from data sets."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ASSOCIATIONS = Counter(
    "dicom_node_associations_total",
    "Association requests by result and, when rejected, why (capacity, called_ae_unknown, "
    "calling_ae_not_allowed, other).",
    ["result", "reason"],
)
ASSOCIATIONS_ACTIVE = Gauge(
    "dicom_node_associations_active", "Associations currently established.", multiprocess_mode="livesum"
)
INSTANCES_RECEIVED = Counter(
    "dicom_node_instances_received_total", "C-STORE requests by outcome.", ["outcome"]
)
REJECTIONS = Counter(
    "dicom_node_rejections_total", "Rejected instances by validation or failure code.", ["code"]
)
BYTES_RECEIVED = Counter("dicom_node_received_bytes_total", "Bytes of instances stored.")
STORE_SECONDS = Histogram(
    "dicom_node_store_seconds",
    "Time from the complete C-STORE request to the durable answer.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STUDIES_COMPLETED = Counter("dicom_node_studies_completed_total", "Studies that went idle and completed.")
DEID_INSTANCES = Counter(
    "dicom_node_deid_instances_total",
    "Instances de-identified, or withheld from inference with a reason code.",
    ["outcome", "reason"],
)
DEID_STUDIES = Counter("dicom_node_deid_studies_total", "Studies the de-identification stage finished.")
JOBS_FINISHED = Counter(
    "dicom_node_jobs_finished_total", "Job attempts by kind and result.", ["kind", "result"]
)
AUTH_ATTEMPTS = Counter("dicom_node_auth_attempts_total", "Admin API logins by result.", ["result"])
RATE_LIMITED = Counter(
    "dicom_node_rate_limited_total", "Admin API requests refused by a rate limit.", ["scope"]
)
HTTP_SECONDS = Histogram(
    "dicom_node_http_request_seconds",
    "Admin API latency by route template.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
HTTP_RESPONSES = Counter(
    "dicom_node_http_responses_total",
    "Admin API responses by route template and status class.",
    ["route", "method", "status_class"],
)
JOB_SECONDS = Histogram(
    "dicom_node_job_seconds",
    "Time one job attempt ran, by kind.",
    ["kind"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
