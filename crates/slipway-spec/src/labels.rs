//! The Docker labels Slipway puts on every container, network, volume and image it creates.
//!
//! Slipway only ever touches Docker objects that carry [`APP`]; objects without it are never
//! stopped, removed or changed. Containers must carry [`DEPLOYMENT`] too, which Slipway sets
//! when it creates one.
//!
//! Images carry labels of their own names ([`IMAGE_APP`], [`IMAGE_COMPONENT`],
//! [`IMAGE_DAEMON`]): Docker copies an image's labels onto every container made from it, and a
//! container someone starts by hand from an app's image (to debug it, or as a benchmark's
//! baseline) must not look like one of the app's instances.

/// The ID of the app the object belongs to.
pub const APP: &str = "slipway.app";
/// The component (service, worker, job or database) the object belongs to.
pub const COMPONENT: &str = "slipway.component";
/// The deployment that created the object. Slipway sets it on every container it creates and
/// never on an image: a container without it is not Slipway's, whatever else it carries (an
/// image built by an earlier version of Slipway carries [`APP`] and [`DAEMON`]).
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
/// The ID of the app an image was built for.
pub const IMAGE_APP: &str = "slipway.image.app";
/// The component an image was built for.
pub const IMAGE_COMPONENT: &str = "slipway.image.component";
/// The daemon that built an image.
pub const IMAGE_DAEMON: &str = "slipway.image.daemon";
