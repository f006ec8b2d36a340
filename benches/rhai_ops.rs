//! What Rhai itself costs under PIL's engine set-up (`script::engine::build`, the sandbox on):
//! one call of a script function with the payment map and a ctx, and single operations inside
//! such a call. It explains most of the `script` bench's scripted cost: two such calls and the
//! operations the shipped scripts do, besides the payment map and reading the result, which
//! that bench times apart. Run: `cargo bench --bench rhai_ops`.

use std::hint::black_box;
use std::time::Instant;

use pil::script::convert::{payment_dynamic, shared};
use pil::script::{Script, engine};
use rhai::{Dynamic, Map};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// (set-up statement, operation). Each operation is timed once and five times in a call, its
/// value assigned to a variable each time.
const OPS: [(&str, &str); 7] = [
    ("", "p.reference_id"),
    ("let v = 1;", "v"),
    ("let v = \"x\";", "v == \"y\""),
    ("let v = \"x\";", "v + \"y\""),
    ("let v = \"x\";", "v.len()"),
    ("let v = 12.5;", "fmt_canonical(v)"),
    ("let v = 1;", "#{ a: v, b: v }"),
];

fn probes() -> String {
    let mut text = String::from("fn unit(p, ctx) { () }\n");
    for (i, (setup, op)) in OPS.iter().enumerate() {
        // Assigned, so that the optimizer cannot drop an operation whose value goes unused.
        let step = format!("x = {op};");
        text.push_str(&format!(
            "fn once_{i}(p, ctx) {{ {setup} let x = (); {step} x }}\n"
        ));
        let five = step.repeat(5);
        text.push_str(&format!(
            "fn five_{i}(p, ctx) {{ {setup} let x = (); {five} x }}\n"
        ));
    }
    text
}

fn per_call(n: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        f();
    }
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    best / n as f64 * 1e6
}

fn main() {
    pil::startup::disable_transparent_huge_pages();
    let engine = engine::build();
    let script = Script::compile_text(&engine, "probes.rhai", &probes()).expect("probes compile");
    let row = pil::store::NewPayment {
        id: "0190d6a2-0000-7000-8000-000000000001".into(),
        reference_id: "ref-1".into(),
        payee_fa: Some("mobile:256700000001@mtn".into()),
        amount_minor: 12_345,
        currency: "KES".into(),
        payee_name: Some("Jane Doe".into()),
        ..Default::default()
    };
    let payment = pil::ingest::received_payment(&row, "b", "bench", 0).expect("payment");
    let p = payment_dynamic(&payment);
    let mut ctx = Map::new();
    ctx.insert("attempt".into(), Dynamic::from_int(1));
    let ctx = shared(ctx);
    let n = 200_000;
    let call = |name: &str| {
        per_call(n, || {
            let out = script.call(&engine, name, (p.clone(), ctx.clone()));
            let _kept = black_box(out.expect("probe runs"));
        })
    };
    println!(
        "one call of fn(p, ctx) {{ () }}: {:.3} µs (PIL's Script::call, sandbox on)",
        call("unit")
    );
    println!("one statement in such a call (set-up as in the source):");
    for (i, (_, op)) in OPS.iter().enumerate() {
        let each = (call(&format!("five_{i}")) - call(&format!("once_{i}"))) / 4.0 * 1e3;
        println!("  {:<24} {each:>4.0} ns", format!("x = {op};"));
    }
}
