"""The torchdyn moons tutorial, ported by changing imports only, reaches >= 99% held-out accuracy."""

import matplotlib

matplotlib.use("Agg")

import pytest
import torch

# --- the only lines that differ from the torchdyn tutorial: the imports ---
from nodecore import NeuralODE, ToyDataset

# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_torchdyn_moons_tutorial_ports_with_import_changes_only():
    torch.manual_seed(0)
    d = ToyDataset()
    X, yn = d.generate(n_samples=512, noise=1e-1, dataset_type="moons", seed=0)

    import matplotlib.pyplot as plt

    colors = ["orange", "blue"]
    fig = plt.figure(figsize=(3, 3))
    ax = fig.add_subplot(111)
    for i in range(len(X)):
        ax.scatter(X[i, 0], X[i, 1], s=1, color=colors[yn[i].int()])
    plt.close(fig)

    import torch.utils.data as data

    device = torch.device("cpu")
    X_train = torch.Tensor(X).to(device)
    y_train = torch.LongTensor(yn.long()).to(device)
    train = data.TensorDataset(X_train, y_train)
    trainloader = data.DataLoader(train, batch_size=len(X), shuffle=True)

    import torch.nn as nn

    f = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
    t_span = torch.linspace(0, 1, 5)
    model = NeuralODE(f, sensitivity="adjoint", solver="dopri5").to(device)

    # The tutorial's Learner.training_step and configure_optimizers, run by a plain loop (Lightning is optional).
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for epoch in range(200):
        for x, y in trainloader:
            t_eval, y_hat = model(x, t_span)
            y_hat = y_hat[-1]  # select last point of solution trajectory
            loss = nn.CrossEntropyLoss()(y_hat, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    t_eval, trajectory = model(X_train, t_span)
    trajectory = trajectory.detach().cpu()
    assert trajectory.shape == (5, 512, 2)
    assert torch.equal(t_eval, t_span)

    color = ["orange", "blue"]
    fig = plt.figure(figsize=(10, 2))
    ax0 = fig.add_subplot(121)
    ax1 = fig.add_subplot(122)
    for i in range(500):
        ax0.plot(t_span, trajectory[:, i, 0], color=color[int(yn[i])], alpha=0.1)
        ax1.plot(t_span, trajectory[:, i, 1], color=color[int(yn[i])], alpha=0.1)
    plt.close(fig)

    n_pts = 50
    x = torch.linspace(trajectory[:, :, 0].min(), trajectory[:, :, 0].max(), n_pts)
    y = torch.linspace(trajectory[:, :, 1].min(), trajectory[:, :, 1].max(), n_pts)
    X, Y = torch.meshgrid(x, y, indexing="ij")
    z = torch.cat([X.reshape(-1, 1), Y.reshape(-1, 1)], 1)
    f = model.vf(0, z.to(device)).cpu().detach()
    fx, fy = f[:, 0], f[:, 1]
    fx, fy = fx.reshape(n_pts, n_pts), fy.reshape(n_pts, n_pts)
    fig = plt.figure(figsize=(4, 4))
    ax = fig.add_subplot(111)
    ax.streamplot(X.numpy().T, Y.numpy().T, fx.numpy().T, fy.numpy().T, color="black")
    plt.close(fig)
    assert torch.isfinite(f).all() and model.vf.nfe > 0

    # Held-out: 2,048 fresh points from another seed.
    X_test, y_test = ToyDataset().generate(n_samples=2048, noise=1e-1, dataset_type="moons", seed=1)
    with torch.no_grad():
        predictions = model(X_test, t_span)[1][-1].argmax(dim=1)
    held_out_accuracy = (predictions == y_test).float().mean().item()
    assert held_out_accuracy >= 0.99, held_out_accuracy
