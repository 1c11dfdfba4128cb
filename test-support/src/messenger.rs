//! Building and starting a messenger for a test, on any stack.

use std::net::SocketAddr;
use std::sync::Arc;

use dataplane::stack::NetworkStack;
use dataplane::{Config, Dispatcher, Messenger, Policy};

/// A started messenger named `name` on `stack`, with configuration `cfg`, dispatcher `d` and
/// default policy `policy`, bound to `bind` first when given (see [`Messenger::addr`] for the
/// bound address). Panics if any step fails.
pub fn start_messenger(
    name: &str,
    cfg: Config,
    stack: Arc<dyn NetworkStack>,
    d: Arc<dyn Dispatcher>,
    policy: Policy,
    bind: Option<SocketAddr>,
) -> Messenger {
    let m = Messenger::builder(name)
        .config(cfg)
        .stack(stack)
        .dispatcher(d)
        .default_policy(policy)
        .build()
        .expect("build messenger");
    if let Some(addr) = bind {
        m.bind(addr).expect("bind");
    }
    m.start().expect("start");
    m
}
