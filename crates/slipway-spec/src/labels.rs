//! The Docker labels Slipway puts on every container, network, volume and image it creates.
//!
//! Slipway only ever touches Docker objects that carry [`APP`]; objects without it are never
//! stopped, removed or changed.

/// The ID of the app the object belongs to.
pub const APP: &str = "slipway.app";
/// The component (service, worker, job or database) the object belongs to.
pub const COMPONENT: &str = "slipway.component";
/// The deployment that created the object.
pub const DEPLOYMENT: &str = "slipway.deployment";
/// What kind of component the object runs: `service`, `worker`, `job` or `database`.
pub const KIND: &str = "slipway.kind";
/// The daemon that owns the object, so that two daemons (or two test runs) sharing one Docker
/// engine never touch each other's objects.
pub const DAEMON: &str = "slipway.daemon";
/// The commit an image was built from.
pub const COMMIT: &str = "slipway.commit";
/// A digest of everything that went into a build, used to reuse a previous build.
pub const BUILD_KEY: &str = "slipway.build-key";
