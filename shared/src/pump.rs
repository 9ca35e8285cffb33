//! The glue between an actix actor and its I/O: an actor implements [`Pumped`] and spawns one
//! [`Pump`] into its context at start. Each time the context is polled (a socket became ready,
//! a worker delivered, a message arrived), the pump calls [`Pumped::poll_pump`] with the actor's
//! own state, which feeds its sans-IO core and drains its outputs. No message hop per sample.

use std::pin::Pin;
use std::task::{Poll, Waker};

use actix::{Actor, ActorFuture, Context};

/// An actor driven by a [`Pump`].
pub trait Pumped: Actor<Context = Context<Self>> {
    /// Does all the work that is ready; `Pending` when waiting for I/O (wakers registered),
    /// `Ready` when the actor is finished (it has stopped its context).
    fn poll_pump(&mut self, ctx: &mut Context<Self>, cx: &mut std::task::Context<'_>) -> Poll<()>;
}

/// The actor future that drives a [`Pumped`] actor; see the module docs.
pub struct Pump;

impl<A: Pumped> ActorFuture<A> for Pump {
    type Output = ();

    fn poll(self: Pin<&mut Self>, act: &mut A, ctx: &mut Context<A>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        act.poll_pump(ctx, cx)
    }
}

/// Remembers the pump's waker so message handlers and completed futures can re-run the pump.
#[derive(Default)]
pub struct Nudge(Option<Waker>);

impl Nudge {
    /// Records the current task's waker (call at the start of `poll_pump`).
    pub fn register(&mut self, cx: &std::task::Context<'_>) {
        match &self.0 {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.0 = Some(cx.waker().clone()),
        }
    }

    /// Schedules another pump pass.
    pub fn wake(&self) {
        if let Some(w) = &self.0 {
            w.wake_by_ref();
        }
    }
}
