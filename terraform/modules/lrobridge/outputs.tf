output "service_url" {
  description = "The Cloud Run service's URL (API calls need roles/run.invoker: see api_invokers)."
  value       = google_cloud_run_v2_service.bridge.uri
}

output "service_name" {
  value = google_cloud_run_v2_service.bridge.name
}

output "completion_topic" {
  description = "Subscribe your own consumers here: one message per completed operation."
  value       = google_pubsub_topic.completions.id
}

output "watch_topic" {
  value = google_pubsub_topic.watches.id
}

output "dead_letter_topic" {
  value = google_pubsub_topic.dead_letter.id
}

output "dead_letter_subscription" {
  description = "Pull subscription holding messages that exhausted their deliveries."
  value       = google_pubsub_subscription.dead_letter.id
}

output "bridge_service_account" {
  value = google_service_account.bridge.email
}

output "pusher_service_account" {
  value = google_service_account.pusher.email
}

output "scheduler_service_account" {
  value = google_service_account.scheduler.email
}

output "push_audience" {
  value = local.push_audience
}

output "api_audience" {
  value = local.api_audience
}

output "store_url" {
  value = local.store_url
}

output "tasks_service_account" {
  description = "Identity of the Cloud Tasks OIDC tokens (the /tasks/* routes accept only it)."
  value       = google_service_account.tasks.email
}

output "tasks_queues" {
  description = "Cloud Tasks queues: watch polls (default and per source host) and webhook retries."
  value = concat(
    google_cloud_tasks_queue.watches[*].id,
    [for queue in google_cloud_tasks_queue.sources : queue.id],
    google_cloud_tasks_queue.webhook_retries[*].id,
  )
}
