"""Debian's Chromium driven by Selenium, for the control room's smoke tests and screenshots.

Streamlit sends an empty skeleton and renders over a websocket, so a page is ready only when
the driver sees its title and the app reports its script as not running.
"""

from __future__ import annotations

from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PAGES = {"overview": ("", "Overview"), "predict": ("predict", "Predict"), "models": ("models", "Models"),
         "experiments": ("experiments", "Experiments"), "monitoring": ("monitoring", "Monitoring"),
         "streams": ("streams", "Streams"), "lineage": ("lineage", "Lineage")}
WAIT_S = 60
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'


def chromium(width: int = 1440, height: int = 2200) -> webdriver.Chrome:
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    return driver


def wait_rendered(driver: webdriver.Chrome, title: str) -> None:
    """Until the page's title is shown, the script has finished and every chart is drawn."""
    wait = WebDriverWait(driver, WAIT_S)
    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "h1"), title))
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '[data-testid="stApp"]')
               .get_attribute("data-test-script-state") == "notRunning")
    wait.until(lambda d: all(c.find_elements(By.CSS_SELECTOR, "canvas, svg")
                             for c in d.find_elements(By.CSS_SELECTOR, '[data-testid="stVegaLiteChart"]')))


def open_page(driver: webdriver.Chrome, base_url: str, page: str) -> None:
    path, title = PAGES[page]
    driver.get(f"{base_url}/{path}")
    wait_rendered(driver, title)


def problems(driver: webdriver.Chrome) -> list[str]:
    """Error elements and tracebacks on screen (what a user must never see on a healthy stack)."""
    found = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ERRORS)]
    if "Traceback" in driver.find_element(By.TAG_NAME, "body").text:
        found.append("a Python traceback is on screen")
    return found


def screenshot(driver: webdriver.Chrome, folder: Path, name: str) -> Path:
    """The whole page: the window is fitted to the content's height first (Streamlit scrolls
    inside its own container, so a plain screenshot stops at the window)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    height = driver.execute_script(
        "const m = document.querySelector('[data-testid=\"stMainBlockContainer\"]');"
        "return m ? m.scrollHeight : document.body.scrollHeight;")
    width = driver.get_window_size()["width"]
    driver.set_window_size(width, max(800, min(6000, int(height) + 40)))
    driver.save_screenshot(str(path))
    return path


def predict_then_lineage(driver: webdriver.Chrome, base_url: str) -> dict:
    """The new user's path: submit the Predict form (click 1), follow the lineage link
    (click 2); returns what the Lineage page then shows."""
    open_page(driver, base_url, "predict")
    driver.find_element(By.CSS_SELECTOR, '[data-testid="stBaseButton-primaryFormSubmit"]').click()
    wait = WebDriverWait(driver, WAIT_S)
    link = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, '[data-testid="stPageLink-NavLink"]')))
    wait_rendered(driver, "Predict")
    answer = {m.find_element(By.CSS_SELECTOR, '[data-testid="stMetricLabel"]').text:
              m.find_element(By.CSS_SELECTOR, '[data-testid="stMetricValue"]').text
              for m in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]')}
    answer["link"] = link.get_attribute("href")
    return answer


def follow_lineage_link(driver: webdriver.Chrome) -> dict:
    driver.find_element(By.CSS_SELECTOR, '[data-testid="stPageLink-NavLink"]').click()
    wait_rendered(driver, "Lineage")
    WebDriverWait(driver, WAIT_S).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, '[data-testid="stGraphVizChart"] svg')))
    return {m.find_element(By.CSS_SELECTOR, '[data-testid="stMetricLabel"]').text:
            m.find_element(By.CSS_SELECTOR, '[data-testid="stMetricValue"]').text
            for m in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]')}
