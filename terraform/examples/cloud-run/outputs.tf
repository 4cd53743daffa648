output "service_url" {
  value = module.lrobridge.service_url
}

output "image_repository" {
  description = "docker tag/push target prefix."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "completion_topic" {
  value = module.lrobridge.completion_topic
}

output "dead_letter_subscription" {
  value = module.lrobridge.dead_letter_subscription
}

output "push_audience" {
  value = module.lrobridge.push_audience
}

output "bridge_service_account" {
  description = "The service's identity: grant it read access to the operations it watches."
  value       = module.lrobridge.bridge_service_account
}
