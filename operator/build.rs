// operator/tests/database.rs embeds the runtime's migrations with `sqlx::migrate!`; without
// this, a migration added after a build is not picked up until the test itself changes.
fn main() {
    println!("cargo:rerun-if-changed=../runtime/migrations");
}
