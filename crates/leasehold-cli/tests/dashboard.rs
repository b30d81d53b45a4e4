//! `leasehold ui` in real headless Chromium (driven through chromedriver) over a real
//! etcd: the page loads, an instance registered by another process appears without a
//! reload, one that crashes leaves after its TTL, and the drain button takes one out
//! (one drained by another process shows as drained too).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/install-test-deps`).

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use nix::sys::signal::Signal;
use serde_json::json;
use support::{run_ok, Running, PATIENCE};
use tokio::task::block_in_place;

const ROOT: &str = "/leasehold/services";

/// A chromedriver process on a free port; killed on drop.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (Debian's chromium-driver; run scripts/install-test-deps)");
        ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A headless Chromium session, once chromedriver answers.
    async fn browser(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,720"]}),
        );
        let deadline = Instant::now() + PATIENCE;
        loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&self.url)
                .await
            {
                Ok(client) => return client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no browser session from chromedriver at {}: {e}", self.url),
            }
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `leasehold ui` on `url`, on a free loopback port; returns it and the page's address.
fn dashboard(url: &str, extra: &[&str]) -> (Running, String) {
    let mut args = vec!["--registry", url, "ui", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut ui = Running::spawn(&args);
    let line = ui.wait_for_line("dashboard at ");
    let page = line.trim_start_matches("dashboard at ").to_owned();
    (ui, page)
}

fn register(url: &str, service: &str, id: &str, extra: &[&str]) -> Running {
    register_at(url, service, id, "127.0.0.1:7001", extra)
}

fn register_at(url: &str, service: &str, id: &str, addr: &str, extra: &[&str]) -> Running {
    let mut args = vec!["--registry", url, "register", service, addr, "--id", id];
    args.extend_from_slice(extra);
    let mut running = Running::spawn(&args);
    running.wait_for_line(&format!("{service}/{id}: registered"));
    running
}

fn row(id: &str) -> String {
    format!("tr.instance[data-id='{id}']")
}

/// Polls the page until `ready` holds for the rows matching `css`.
async fn wait_rows(browser: &Client, css: &str, what: &str, ready: impl Fn(usize) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let rows = browser.find_all(Locator::Css(css)).await.unwrap().len();
        if ready(rows) {
            return;
        }
        let source = browser.source().await.unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; page:\n{source}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits up to [`PATIENCE`] for the element at `css` to be on the page; fails with `what`.
async fn appears(browser: &Client, css: &str, what: &str) -> Element {
    browser
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{what}: no {css} on the page: {e}"))
}

/// The element at `css`, which must be on the page now.
async fn find(browser: &Client, css: &str) -> Element {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
}

/// The text of the element at `css`, which must be on the page now.
async fn text_of(browser: &Client, css: &str) -> String {
    find(browser, css).await.text().await.unwrap()
}

/// Clicks the element at `css`, which must be on the page now.
async fn click(browser: &Client, css: &str) {
    find(browser, css).await.click().await.unwrap();
}

/// The instance count shown for `service`.
async fn count_of(browser: &Client, service: &str) -> String {
    text_of(browser, &format!("section[data-service='{service}'] .count")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_registrations_and_crashes_without_a_reload() {
    let etcd = leasehold_testkit::EtcdCluster::start_single()
        .await
        .expect("etcd starts");
    let url = etcd.url(ROOT);
    let (ui, page) = block_in_place(|| dashboard(&url, &[]));
    let driver = ChromeDriver::start();
    let browser = driver.browser().await;
    browser.goto(&page).await.unwrap();
    assert_eq!(browser.title().await.unwrap(), "leasehold");
    appears(
        &browser,
        "#services .empty",
        "the page renders the empty registry",
    )
    .await;
    // Set on this page only: gone if the page reloads.
    browser
        .execute("window.notReloaded = true;", vec![])
        .await
        .unwrap();

    let e1 = block_in_place(|| {
        register(
            &url,
            "echo",
            "e1",
            &[
                "--ttl",
                "2s",
                "--zone",
                "z1",
                "--version",
                "1.2",
                "--weight",
                "3",
                "--meta",
                "color=blue",
            ],
        )
    });
    let registered = Instant::now();
    appears(&browser, &row("e1"), "the registered instance appears").await;
    eprintln!(
        "dashboard: e1 appeared {:?} after its owner printed registered",
        registered.elapsed()
    );
    let text = text_of(&browser, &row("e1")).await;
    for field in ["e1", "127.0.0.1:7001", "z1", "3", "1.2", "color=blue", "live"] {
        assert!(text.contains(field), "the row lacks {field}: {text}");
    }
    assert_eq!(count_of(&browser, "echo").await, "1");
    // Read-only by default: the drain button is disabled.
    let drain = find(&browser, &format!("{} button.drain", row("e1"))).await;
    assert!(
        !drain.is_enabled().await.unwrap(),
        "drain is off without --allow-writes"
    );

    // A crash: no deregistration, so the instance leaves when its 2 s TTL runs out.
    e1.signal(Signal::SIGKILL);
    block_in_place(|| e1.wait());
    wait_rows(&browser, &row("e1"), "the crashed instance to leave", |n| n == 0).await;
    let kept = browser
        .execute("return window.notReloaded === true;", vec![])
        .await
        .unwrap();
    assert_eq!(kept, json!(true), "the page was reloaded");

    // The dashboard serves its metrics beside the page.
    browser.goto(&format!("{page}metrics")).await.unwrap();
    let metrics = browser.source().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "{}{{service=\"echo\"}} 0",
            leasehold::metrics::DISCOVERY_INSTANCES
        )),
        "{metrics}"
    );

    browser.close().await.unwrap();
    ui.signal(Signal::SIGTERM);
    let (code, seen) = block_in_place(|| ui.wait());
    assert_eq!(code, Some(0), "{seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_button_takes_an_instance_out_and_undrain_brings_it_back() {
    let etcd = leasehold_testkit::EtcdCluster::start_single()
        .await
        .expect("etcd starts");
    let url = etcd.url(ROOT);
    let (_ui, page) = block_in_place(|| dashboard(&url, &["--allow-writes"]));
    let mut e1 = block_in_place(|| register(&url, "echo", "e1", &[]));
    let driver = ChromeDriver::start();
    let browser = driver.browser().await;
    browser.goto(&page).await.unwrap();
    let live = format!("{}[data-state='live']", row("e1"));
    let drained = format!("{}[data-state='drained']", row("e1"));
    appears(&browser, &live, "the instance shows live").await;

    click(&browser, &format!("{live} button.drain")).await;
    appears(&browser, &drained, "the drain button drains it").await;
    block_in_place(|| e1.wait_for_line("echo/e1: drained by an operator"));
    assert_eq!(
        count_of(&browser, "echo").await,
        "0",
        "a drained instance is out of the set"
    );

    click(&browser, &format!("{drained} button.undrain")).await;
    block_in_place(|| e1.wait_for_line("echo/e1: registered"));
    appears(&browser, &live, "the undrain button brings it back").await;

    // Drained by `leasehold drain` from another process: the page shows it drained too,
    // with the details of the instance, and its undrain button.
    block_in_place(|| run_ok(&["--registry", &url, "drain", "echo", "e1"]));
    block_in_place(|| e1.wait_for_line("echo/e1: drained by an operator"));
    let shown = appears(&browser, &drained, "drained elsewhere, shown drained")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        shown.contains("127.0.0.1:7001"),
        "the drained row shows the address: {shown}"
    );
    find(&browser, &format!("{drained} button.undrain")).await;
    block_in_place(|| run_ok(&["--registry", &url, "undrain", "echo", "e1"]));
    appears(&browser, &live, "undrained elsewhere, shown live").await;
    browser.close().await.unwrap();
}

/// Writes the README's picture of the dashboard to `LEASEHOLD_SCREENSHOT` (a PNG
/// path): run by hand with `--ignored` when the page changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes the README's screenshot; run by hand"]
async fn screenshot() {
    let path = std::env::var("LEASEHOLD_SCREENSHOT").expect("LEASEHOLD_SCREENSHOT=path/to.png");
    let etcd = leasehold_testkit::EtcdCluster::start_single()
        .await
        .expect("etcd starts");
    let url = etcd.url(ROOT);
    let (_ui, page) = block_in_place(|| dashboard(&url, &["--allow-writes"]));
    let _held: Vec<Running> = block_in_place(|| {
        vec![
            register_at(
                &url,
                "echo",
                "echo-a1",
                "10.0.1.11:7001",
                &[
                    "--zone",
                    "eu-west-1a",
                    "--version",
                    "2.4.1",
                    "--weight",
                    "2",
                    "--meta",
                    "canary=false",
                ],
            ),
            register_at(
                &url,
                "echo",
                "echo-b1",
                "10.0.2.11:7001",
                &["--zone", "eu-west-1b", "--version", "2.4.1", "--weight", "2"],
            ),
            register_at(
                &url,
                "echo",
                "echo-b2",
                "10.0.2.12:7001",
                &[
                    "--zone",
                    "eu-west-1b",
                    "--version",
                    "2.5.0",
                    "--meta",
                    "canary=true",
                ],
            ),
            register_at(
                &url,
                "greeter",
                "greeter-1",
                "http://10.0.1.21:50051",
                &[
                    "--zone",
                    "eu-west-1a",
                    "--version",
                    "1.0.3",
                    "--meta",
                    "proto=grpc",
                ],
            ),
            register_at(
                &url,
                "greeter",
                "greeter-2",
                "http://10.0.3.21:50051",
                &[
                    "--zone",
                    "eu-west-1c",
                    "--version",
                    "1.0.3",
                    "--meta",
                    "proto=grpc",
                ],
            ),
        ]
    });
    let driver = ChromeDriver::start();
    let browser = driver.browser().await;
    browser.goto(&page).await.unwrap();
    wait_rows(&browser, "tr.instance", "every instance", |n| n == 5).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    std::fs::write(&path, browser.screenshot().await.unwrap()).unwrap();
    browser.close().await.unwrap();
}
