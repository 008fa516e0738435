//! An in-memory runtime for testing the rollout logic: it checks the bounds at every moment.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::execute::{Event, Observer};
use crate::runtime::{Instance, InstanceSpec, Probe, ProbeResult, Runtime, RuntimeError};

#[derive(Debug, Default)]
pub(crate) struct State {
    next: u32,
    /// Live instances: id to image.
    pub live: BTreeMap<String, String>,
    /// Instances in the pool (ready and not yet stopping).
    pub ready: BTreeSet<String>,
    /// Images whose instances never become ready.
    pub bad_images: BTreeSet<String>,
    /// The n-th started instance (from 0) fails, whatever its image.
    pub fail_nth: Option<u32>,
    pub max_live: usize,
    pub min_ready: usize,
    pub started: u32,
    pub stopped: u32,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Fake {
    pub state: Arc<Mutex<State>>,
}

impl Fake {
    pub fn with_old(image: &str, n: u32) -> (Fake, Vec<Instance>) {
        let fake = Fake::default();
        let mut old = Vec::new();
        {
            let mut s = fake.state.lock().unwrap();
            for _ in 0..n {
                let id = format!("old-{}", s.next);
                s.next += 1;
                s.live.insert(id.clone(), image.into());
                s.ready.insert(id.clone());
                old.push(Instance {
                    id: id.clone(),
                    name: id,
                    image: image.into(),
                    ..Instance::default()
                });
            }
            s.max_live = s.live.len();
            s.min_ready = s.ready.len();
        }
        (fake, old)
    }

    fn note(s: &mut State) {
        s.max_live = s.max_live.max(s.live.len());
        s.min_ready = s.min_ready.min(s.ready.len());
    }
}

impl Runtime for Fake {
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        tokio::task::yield_now().await;
        let mut s = self.state.lock().unwrap();
        let id = format!("new-{}", s.next);
        s.next += 1;
        s.live.insert(id.clone(), spec.image.clone());
        Fake::note(&mut s);
        s.started += 1;
        Ok(Instance {
            id: id.clone(),
            name: id,
            component: spec.component.clone(),
            image: spec.image.clone(),
            ..Instance::default()
        })
    }

    async fn keep_running(&self, _instance: &Instance) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn probe(&self, instance: &Instance, _probe: &Probe, _t: Duration) -> ProbeResult {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let s = self.state.lock().unwrap();
        let nth: u32 = instance
            .id
            .trim_start_matches("new-")
            .parse()
            .unwrap_or(u32::MAX);
        let first_new = s.next - s.started;
        if s.bad_images.contains(&instance.image) || s.fail_nth.map(|n| n + first_new) == Some(nth)
        {
            ProbeResult::Exited(3)
        } else {
            ProbeResult::Ready
        }
    }

    async fn stop(&self, instance: &Instance, _grace: Duration) -> Result<(), RuntimeError> {
        tokio::task::yield_now().await;
        let mut s = self.state.lock().unwrap();
        s.ready.remove(&instance.id);
        s.live.remove(&instance.id);
        s.stopped += 1;
        Ok(())
    }

    async fn last_logs(&self, _instance: &Instance, _lines: usize) -> String {
        "fake log line".into()
    }
}

impl Observer for Fake {
    fn event(&self, event: Event) -> BoxFuture<'_, ()> {
        let mut s = self.state.lock().unwrap();
        match event {
            Event::Ready { instance, .. } => {
                s.ready.insert(instance.id);
            }
            Event::Stopping { instance, .. } => {
                s.ready.remove(&instance.id);
            }
            _ => {}
        }
        Fake::note(&mut s);
        Box::pin(async {})
    }

    fn drain<'a>(&'a self, _instance: &'a Instance, _max: Duration) -> BoxFuture<'a, ()> {
        Box::pin(tokio::task::yield_now())
    }
}
