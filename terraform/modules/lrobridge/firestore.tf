# The distributed store (store = "firestore"): LROBRIDGE_STORE=firestore://DATABASE.
resource "google_firestore_database" "store" {
  count                   = local.firestore ? 1 : 0
  project                 = var.project_id
  name                    = var.firestore_database
  location_id             = var.firestore_location != "" ? var.firestore_location : var.region
  type                    = "FIRESTORE_NATIVE"
  delete_protection_state = var.deletion_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  deletion_policy         = var.deletion_protection ? "ABANDON" : "DELETE"
}
