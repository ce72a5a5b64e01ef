// `sqlx::migrate!` embeds runtime/migrations at compile time; without this, a migration added
// or edited after a build is not picked up until something else in the crate changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
