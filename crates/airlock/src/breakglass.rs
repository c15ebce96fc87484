//! The break-glass commands: break the glass (`breakglass`), and list and answer the reviews
//! emergency grants owe (`reviews`, `review`).

use airlock_core::values::{GrantDuration, Reason};
use airlock_http::api::{BreakGlassBody, BreakGlassView, ReviewBody, ReviewView};
use anyhow::anyhow;

use crate::cli::Remote;
use crate::client::Client;
use crate::remote::id;
use crate::{Outcome, output};

pub async fn break_glass(remote: &Remote, body: BreakGlassBody) -> Outcome {
    if let Some(duration) = &body.duration {
        GrantDuration::parse(duration).map_err(|e| anyhow!("--for: {e}"))?;
    }
    Reason::parse(&body.reason).map_err(|e| anyhow!("--reason: {e}"))?;
    if let Some(incident) = &body.incident {
        crate::incident::incident_id(incident)?;
    }
    let broken: BreakGlassView = Client::new(remote)?.post("/v1/breakglass", &body).await?;
    if remote.json {
        output::json(&broken);
        return Ok(());
    }
    output::request(&broken.request);
    if broken.cut_to_ceiling {
        println!("note      the duration asked was cut to the role's break-glass ceiling, {}", broken.request.duration);
    }
    println!(
        "review    owed by somebody else: `airlock review {} --accept|--reject --comment …` (due {})",
        broken.review.grant,
        output::when(broken.review.due_at)
    );
    Ok(())
}

pub async fn review(remote: &Remote, grant_id: &str, accept: bool, comment: String) -> Outcome {
    Reason::parse(&comment).map_err(|e| anyhow!("--comment: {e}"))?;
    let verdict = if accept { "accept" } else { "reject" }.to_owned();
    let path = format!("/v1/reviews/{}", id(grant_id)?);
    let review: ReviewView = Client::new(remote)?.post(&path, &ReviewBody { verdict, comment }).await?;
    if remote.json {
        output::json(&review)
    } else {
        output::reviews(std::slice::from_ref(&review))
    }
    Ok(())
}

pub async fn reviews(remote: &Remote, open: bool) -> Outcome {
    let reviews: Vec<ReviewView> = Client::new(remote)?.get(&format!("/v1/reviews?open={open}")).await?;
    if remote.json {
        output::json(&reviews)
    } else {
        output::reviews(&reviews)
    }
    Ok(())
}
