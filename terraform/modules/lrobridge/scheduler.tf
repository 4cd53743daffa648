# Every minute, webhook deliveries that are due for a retry are sent: POST /v1/deliveries:drain
# with an OIDC token of the scheduler's identity (LROBRIDGE_API_SERVICE_ACCOUNTS lets it in).
# With Cloud Tasks (tasks.tf) retries run at their planned time and this is the safety net; in
# tasks watch mode it also reschedules watches whose task was lost.
resource "google_cloud_scheduler_job" "drain" {
  project     = var.project_id
  region      = var.scheduler_region != "" ? var.scheduler_region : var.region
  name        = "${var.name}-drain-deliveries"
  description = "Sends lrobridge's webhook deliveries that are due for a retry."
  schedule    = var.drain_schedule
  time_zone   = "Etc/UTC"
  # The drain starts attempts for maxTime (40 s), each may take LROBRIDGE_WEBHOOK_TIMEOUT (15 s).
  attempt_deadline = "120s"

  # The next minute's run is the retry.
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = "${google_cloud_run_v2_service.bridge.uri}/v1/deliveries:drain"
    headers = {
      "Content-Type" = "application/json"
    }
    body = base64encode(jsonencode({ maxTime = "40s" }))

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = local.api_audience
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.scheduler_invokes]
}
