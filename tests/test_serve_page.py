"""The drawing page in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`),
driven by selenium with real pointer events, draws MNIST test digits stroke by stroke and reads
the labels the page shows."""

import shutil
import threading

import numpy as np
import pytest

import mnistfx

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="no Chromium here: apt-get install chromium chromium-driver"
)


@pytest.fixture(scope="module")
def page(trained_tuned):
    server = mnistfx.make_server(trained_tuned, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=900,700",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    try:
        driver.get(server.url)
        yield driver
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()


def runs(image, threshold: int = 128):
    """The digit's ink as horizontal runs ``(row, first column, last column)`` of pixels above ``threshold``."""
    ink = (image.numpy() > threshold).astype(np.int8)
    for row in range(28):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], ink[row], [0]])))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            yield row, int(start), int(stop) - 1


def draw(driver, image, *, release=True):
    """Draw ``image`` on the pad: a pointer stroke along each run of ink, 10 CSS pixels per MNIST pixel."""
    pad = driver.find_element(By.ID, "pad")
    side = pad.size["width"]
    assert side == pad.size["height"] == 280
    strokes = list(runs(image))
    actions = ActionChains(driver, duration=0)
    for i, (row, first, last) in enumerate(strokes):
        y = row * 10 + 5 - side // 2  # offsets from the pad's centre
        actions.move_to_element_with_offset(pad, first * 10 + 5 - side // 2, y).click_and_hold()
        actions.move_by_offset((last - first) * 10, 0)
        if release or i < len(strokes) - 1:
            actions.release()
    actions.perform()


def shown(driver):
    """``(label, the ten percentages)`` once the page has answered the latest drawing."""
    WebDriverWait(driver, 20).until(
        lambda d: (
            d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "idle"
            and d.find_element(By.ID, "label").text != "–"
        )
    )
    values = [float(v.text.rstrip("%")) for v in driver.find_elements(By.CSS_SELECTOR, "#bars .value")]
    return driver.find_element(By.ID, "label").text, values


def _covered(image) -> np.ndarray:
    """What :func:`draw`'s strokes cover of the 280-pixel pad: each inked pixel's 10×10 square, widened by the
    page's 20-pixel pen (``app.js``: a fourteenth of the pad, round caps) by 5 pixels each way."""
    ink = np.kron(image.numpy() > 128, np.ones((10, 10), dtype=bool))
    padded = np.pad(ink, 5)
    covered = np.zeros_like(ink)
    for dy in range(11):
        for dx in range(11):
            covered |= padded[dy : dy + 280, dx : dx + 280]
    return covered * 255.0


def test_drawn_digits_get_the_right_labels(page, mnist, trained_tuned, tmp_path):
    w = mnistfx.load_model_weights(trained_tuned)
    assert "the tuned model answers" in page.find_element(By.ID, "model").text
    chosen = {}
    for image, label in zip(mnist.test_images[:300], mnist.test_labels[:300].tolist(), strict=True):
        if label in chosen:
            continue
        probs = w.probabilities(mnistfx.prepare_digit(_covered(image))[None])[0]
        if int(probs.argmax()) == label and probs[label] > 0.7:  # the library reads the drawing surely
            chosen[label] = image
    assert len(chosen) == 10
    for label in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9):
        page.find_element(By.ID, "clear").click()
        assert page.find_element(By.ID, "label").text == "–"
        draw(page, chosen[label])
        got, percents = shown(page)
        assert got == str(label), f"drew a {label}, the page shows {got} ({percents})"
        assert abs(sum(percents) - 100) < 1 and max(percents) == percents[label]
        seen = page.execute_script(
            "const c = document.getElementById('seen').getContext('2d');"
            "return Array.from(c.getImageData(0, 0, 28, 28).data);"
        )
        seen = np.array(seen, dtype=np.uint8).reshape(28, 28, 4)[..., 0]
        assert seen.max() == 255 and (seen > 0).mean() < 0.5  # the model's 28×28 view of the drawing
    page.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_the_answer_updates_while_drawing_and_clear_resets_it(page, mnist):
    page.find_element(By.ID, "clear").click()
    seven = mnist.test_images[0]
    draw(page, seven, release=False)  # the pointer is still down after the last stroke
    label, _ = shown(page)
    assert label == "7"
    ActionChains(page).release().perform()
    page.find_element(By.ID, "clear").click()
    assert page.find_element(By.ID, "label").text == "–"
    assert [v.text for v in page.find_elements(By.CSS_SELECTOR, "#bars .value")] == ["0.0%"] * 10
